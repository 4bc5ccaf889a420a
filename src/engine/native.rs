//! Native evaluators for the ONNX-ML operators most tabular models are made of: tree ensembles
//! (`TreeEnsembleClassifier`, `TreeEnsembleRegressor`: gradient boosting, random forests,
//! XGBoost, LightGBM) and linear models (`LinearClassifier`, `LinearRegressor`: logistic
//! regression, scorecards).
//!
//! For one row, ONNX Runtime's own machinery (binding, allocation planning, kernel dispatch) costs
//! more than the model: a 100-tree ensemble is 300 comparisons. A graph that is exactly one of
//! these operators (plus `Identity` nodes) is therefore compiled here into flat arrays and run on
//! the caller's thread with no allocation and no lock.
//!
//! The runtime stays the reference. The semantics below follow ONNX Runtime's CPU kernels,
//! including their handling of the cases the ONNX specification leaves open (one base value for
//! two classes, weights for one class only); a form not covered is left to the runtime. And
//! before a compiled model is used, the engine runs probe rows through both and keeps the native
//! evaluator only if every value agrees (see [`Native::probe`]).

use std::collections::HashMap;

use prost::Message;

use super::onnx::{ModelProto, NodeProto};

const ML: &str = "ai.onnx.ml";

/// A model compiled for native evaluation.
#[derive(Debug)]
pub(super) struct Native {
    model: Model,
    width: usize,
    outputs: usize,
    summary: String,
}

#[derive(Debug)]
enum Model {
    Linear(Linear),
    Trees(Trees),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Post {
    None,
    Logistic,
    Softmax,
}

impl Native {
    /// Compiles the model in `bytes`, whose one float input is `width` wide and whose read output
    /// is `output`. The error names why the graph is not one evaluated natively.
    pub fn compile(bytes: &[u8], output: &str, width: usize) -> Result<Native, String> {
        let model = ModelProto::decode(bytes).map_err(|e| format!("unreadable model file: {e}"))?;
        if !model.functions.is_empty() {
            return Err("the model defines functions".into());
        }
        let graph = model.graph.ok_or("the model has no graph")?;
        if !graph.initializer.is_empty() || !graph.sparse_initializer.is_empty() {
            return Err("the graph has initializers".into());
        }
        let [input] = &graph.input[..] else {
            return Err(format!("the graph has {} inputs", graph.input.len()));
        };
        // Walk back from the read output through Identity nodes to the operator computing it.
        let mut name = output;
        let mut steps = 0;
        let (node, slot) = loop {
            // The runtime has already refused a graph with a cycle; the bound is for this walk.
            steps += 1;
            if steps > graph.node.len() {
                return Err("the Identity nodes loop".into());
            }
            let Some(node) = graph.node.iter().find(|n| n.output.iter().any(|o| o == name)) else {
                return Err(format!("no node computes `{name}`"));
            };
            if node.domain.is_empty() && node.op_type == "Identity" && node.input.len() == 1 {
                name = &node.input[0];
                continue;
            }
            break (node, node.output.iter().position(|o| o == name).unwrap_or(usize::MAX));
        };
        if node.domain != ML {
            return Err(format!("`{output}` comes from {} (domain `{}`)", node.op_type, node.domain));
        }
        if node.input.len() != 1 || node.input[0] != input.name {
            return Err(format!("{} does not read the graph input directly", node.op_type));
        }
        if let Some(a) = node.attribute.iter().find(|a| !a.ref_attr_name.is_empty() || a.t.is_some()) {
            return Err(format!("attribute `{}` is a reference or a tensor", a.name));
        }
        let classifier = node.op_type.ends_with("Classifier");
        let scores = if classifier { 1 } else { 0 };
        if slot != scores {
            return Err(format!("`{output}` is output {slot} of {}, not its scores", node.op_type));
        }
        let (model, outputs, summary) = match node.op_type.as_str() {
            "LinearClassifier" | "LinearRegressor" => {
                let linear = Linear::compile(node, width, classifier)?;
                let summary = format!("linear, {} output(s)", linear.targets);
                let outputs = linear.targets;
                (Model::Linear(linear), outputs, summary)
            }
            "TreeEnsembleClassifier" | "TreeEnsembleRegressor" => {
                let trees = Trees::compile(node, width, classifier)?;
                let summary = format!(
                    "tree ensemble, {} trees, {} nodes",
                    trees.roots.len(),
                    trees.nodes.len() + trees.leaves.len()
                );
                let outputs = trees.scores;
                (Model::Trees(trees), outputs, summary)
            }
            other => return Err(format!("operator {other} is not evaluated natively")),
        };
        Ok(Native { model, width, outputs, summary })
    }

    /// Values per row in the output.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// What was compiled, for the load log.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Scores `rows` (row-major, `width` values each) into `out` (`outputs` values per row).
    pub fn run(&self, rows: &[f32], out: &mut [f32]) {
        debug_assert_eq!(rows.len() / self.width, out.len() / self.outputs);
        for (row, out) in rows.chunks_exact(self.width).zip(out.chunks_exact_mut(self.outputs)) {
            match &self.model {
                Model::Linear(m) => m.run(row, out),
                Model::Trees(m) => m.run(row, out),
            }
        }
    }

    /// `rows` rows to compare against the runtime before the native evaluator is trusted. A tree
    /// split is where two evaluators can part ways (`<` for `<=`, a missing value sent the other
    /// way), so each value is a threshold of its feature, one step either side of it, or
    /// missing; linear models get a spread of ordinary values. The sequence is fixed, so a
    /// disagreement reproduces.
    pub fn probe(&self, rows: usize) -> Vec<f32> {
        let mut candidates: Vec<Vec<f32>> = vec![vec![0.0, 1.0, -1.0]; self.width];
        match &self.model {
            Model::Trees(t) => {
                for n in &t.nodes {
                    let v = n.threshold;
                    let around = if v == 0.0 || !v.is_finite() {
                        [v, 1e-30, -1e-30]
                    } else {
                        [v, f32::from_bits(v.to_bits() + 1), f32::from_bits(v.to_bits() - 1)]
                    };
                    candidates[n.feature as usize].extend(around);
                }
            }
            Model::Linear(_) => {
                for c in &mut candidates {
                    c.extend([0.5, -2.5, 3.0, 10.0, -0.25]);
                }
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            // splitmix64: a fixed, well-spread sequence without a dependency.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let trees = matches!(self.model, Model::Trees(_));
        let mut rows_out = Vec::with_capacity(rows * self.width);
        for _ in 0..rows * self.width {
            let j = rows_out.len() % self.width;
            let draw = next();
            // One value in eight is missing, so the trees' missing-value routes are walked too.
            rows_out.push(if trees && draw % 8 == 0 {
                f32::NAN
            } else {
                candidates[j][((draw >> 3) % candidates[j].len() as u64) as usize]
            });
        }
        rows_out
    }
}

fn post_of(node: &NodeProto) -> Result<Post, String> {
    match node.text("post_transform").unwrap_or("NONE") {
        "NONE" => Ok(Post::None),
        "LOGISTIC" => Ok(Post::Logistic),
        "SOFTMAX" => Ok(Post::Softmax),
        other => Err(format!("post_transform {other} is not evaluated natively")),
    }
}

/// The runtime's logistic: computed on |x| so large scores neither overflow nor lose precision.
fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(-f32::MAX, f32::max);
    let mut sum = 0.0;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}

fn transform(post: Post, values: &mut [f32]) {
    match post {
        Post::None => {}
        Post::Logistic => values.iter_mut().for_each(|v| *v = logistic(*v)),
        Post::Softmax => softmax(values),
    }
}

/// `scores = coefficients · row + intercepts`, one score per target or class.
#[derive(Debug)]
struct Linear {
    /// `[targets, width]`, row-major.
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    targets: usize,
    post: Post,
}

impl Linear {
    fn compile(node: &NodeProto, width: usize, classifier: bool) -> Result<Linear, String> {
        let coefficients = node.floats("coefficients").to_vec();
        let mut intercepts = node.floats("intercepts").to_vec();
        let post = post_of(node)?;
        let targets = if classifier {
            // One score for two labels makes the runtime invent the second; left to it.
            if intercepts.len() < 2 {
                return Err("a linear classifier with one score".into());
            }
            intercepts.len()
        } else {
            if post != Post::None {
                return Err("a linear regressor with a post transform".into());
            }
            let targets = usize::try_from(node.int("targets").unwrap_or(1)).map_err(|_| "negative targets")?;
            if intercepts.is_empty() {
                intercepts = vec![0.0; targets];
            }
            targets
        };
        if targets == 0 || intercepts.len() != targets || coefficients.len() != targets * width {
            return Err(format!(
                "{} coefficients and {} intercepts for {targets} target(s) of {width} inputs",
                coefficients.len(),
                intercepts.len()
            ));
        }
        Ok(Linear { coefficients, intercepts, targets, post })
    }

    fn run(&self, row: &[f32], out: &mut [f32]) {
        for ((o, c), b) in out.iter_mut().zip(self.coefficients.chunks_exact(row.len())).zip(&self.intercepts) {
            *o = row.iter().zip(c).map(|(x, w)| x * w).sum::<f32>() + b;
        }
        transform(self.post, out);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

/// One branch node: it goes to `yes` when its test holds (or the value is missing and missing
/// values go that way), else to `no`. A child with [`LEAF`] set is a leaf, by its index in
/// [`Trees::leaves`]: the walk never loads a leaf node to learn it is one.
#[derive(Debug, Clone, Copy)]
struct Node {
    threshold: f32,
    feature: u32,
    mode: Mode,
    missing_yes: bool,
    yes: u32,
    no: u32,
}

const LEAF: u32 = 1 << 31;

/// How two classes' scores become the two probabilities, as the runtime does it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Binary {
    /// Not a two-class model, or one whose leaves weigh both classes.
    No,
    /// Every weight is for class 0 and one score is kept: probabilities
    /// `[logistic(-s), logistic(s)]` with s = sum + base (the boosting form).
    LogisticOfOne { base: f32 },
    /// Every weight is for class 0 and non-negative: `[1 - s, s]` (a forest's vote share).
    ShareOfOne { base: f32 },
}

#[derive(Debug)]
struct Trees {
    /// Branch nodes only.
    nodes: Vec<Node>,
    /// Each tree's root: a node index, or a leaf tagged with [`LEAF`].
    roots: Vec<u32>,
    /// Each leaf's weights: `weights[start..end]`.
    leaves: Vec<(u32, u32)>,
    /// `(class or target, weight)` of every leaf, leaf after leaf.
    weights: Vec<(u32, f32)>,
    /// When every leaf holds one weight for score 0 (boosting, one-target regression): that
    /// weight per leaf, read without a loop.
    single: Option<Vec<f32>>,
    /// The split rule every branch uses, when they share one and send no missing value the
    /// test's way: the walk then needs no per-node dispatch.
    uniform: Option<Mode>,
    /// Scores per row, and values written per row: classes or targets.
    scores: usize,
    base: Vec<f32>,
    post: Post,
    average: bool,
    binary: Binary,
}

impl Trees {
    fn compile(node: &NodeProto, width: usize, classifier: bool) -> Result<Trees, String> {
        let tree_ids = node.ints("nodes_treeids");
        let node_ids = node.ints("nodes_nodeids");
        let features = node.ints("nodes_featureids");
        let values = node.floats("nodes_values");
        let modes = node.texts("nodes_modes");
        let yes_ids = node.ints("nodes_truenodeids");
        let no_ids = node.ints("nodes_falsenodeids");
        let missing = node.ints("nodes_missing_value_tracks_true");
        let n = tree_ids.len();
        if n == 0
            || [node_ids.len(), features.len(), values.len(), modes.len(), yes_ids.len(), no_ids.len()]
                .iter()
                .any(|&l| l != n)
            || !(missing.is_empty() || missing.len() == n)
        {
            return Err("node attributes of different lengths".into());
        }
        let index: HashMap<(i64, i64), u32> =
            tree_ids.iter().zip(node_ids).enumerate().map(|(i, (&t, &id))| ((t, id), i as u32)).collect();
        if index.len() != n {
            return Err("a node id repeats within a tree".into());
        }
        // Trees in the order their ids first appear, as the runtime sums them.
        let mut roots = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for &t in tree_ids {
            if seen.insert(t) {
                roots.push(*index.get(&(t, 0)).ok_or_else(|| format!("tree {t} has no node 0"))?);
            }
        }
        // Every node as given (children by position), before branches and leaves part ways.
        let mut all = Vec::with_capacity(n);
        for i in 0..n {
            let mode = match modes[i] {
                "BRANCH_LEQ" => Mode::Leq,
                "BRANCH_LT" => Mode::Lt,
                "BRANCH_GTE" => Mode::Gte,
                "BRANCH_GT" => Mode::Gt,
                "BRANCH_EQ" => Mode::Eq,
                "BRANCH_NEQ" => Mode::Neq,
                "LEAF" => Mode::Leaf,
                other => return Err(format!("node mode {other}")),
            };
            let (mut yes, mut no, mut feature) = (0, 0, 0);
            if mode != Mode::Leaf {
                let child = |id: i64| {
                    index.get(&(tree_ids[i], id)).copied().ok_or_else(|| format!("tree {}: no node {id}", tree_ids[i]))
                };
                yes = child(yes_ids[i])?;
                no = child(no_ids[i])?;
                feature = u32::try_from(features[i])
                    .ok()
                    .filter(|&f| (f as usize) < width)
                    .ok_or_else(|| format!("tree {} splits on feature {} of {width}", tree_ids[i], features[i]))?;
            }
            let missing_yes = missing.get(i).is_some_and(|&m| m != 0);
            all.push(Node { threshold: values[i], feature, mode, missing_yes, yes, no });
        }
        check_trees(&all, &roots)?;

        let prefix = if classifier { "class" } else { "target" };
        let w_trees = node.ints(&format!("{prefix}_treeids"));
        let w_nodes = node.ints(&format!("{prefix}_nodeids"));
        let w_ids = node.ints(&format!("{prefix}_ids"));
        let w_values = node.floats(&format!("{prefix}_weights"));
        let m = w_trees.len();
        if [w_nodes.len(), w_ids.len(), w_values.len()].iter().any(|&l| l != m) {
            return Err("weight attributes of different lengths".into());
        }
        let scores = if classifier {
            node.ints("classlabels_int64s").len().max(node.texts("classlabels_strings").len())
        } else {
            usize::try_from(node.int("n_targets").unwrap_or(1)).map_err(|_| "negative n_targets")?
        };
        if scores == 0 {
            return Err("no classes or targets".into());
        }
        let mut per_leaf: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
        for k in 0..m {
            let at = *index.get(&(w_trees[k], w_nodes[k])).ok_or("a weight for a node that does not exist")?;
            if all[at as usize].mode != Mode::Leaf {
                return Err("a weight on a branch node".into());
            }
            let id = u32::try_from(w_ids[k])
                .ok()
                .filter(|&c| (c as usize) < scores)
                .ok_or("a weight's id is out of range")?;
            per_leaf[at as usize].push((id, w_values[k]));
        }
        // Branches and leaves numbered apart; children and roots renumbered to match.
        let mut renumber = vec![0u32; n];
        let (mut branches, mut leaf_count) = (0u32, 0u32);
        for (i, node) in all.iter().enumerate() {
            if node.mode == Mode::Leaf {
                renumber[i] = LEAF | leaf_count;
                leaf_count += 1;
            } else {
                renumber[i] = branches;
                branches += 1;
            }
        }
        let mut nodes = Vec::with_capacity(branches as usize);
        let (mut leaves, mut weights) = (Vec::with_capacity(leaf_count as usize), Vec::with_capacity(m));
        for (node, leaf) in all.iter().zip(&per_leaf) {
            if node.mode == Mode::Leaf {
                let start = weights.len() as u32;
                weights.extend_from_slice(leaf);
                leaves.push((start, weights.len() as u32));
            } else {
                nodes.push(Node { yes: renumber[node.yes as usize], no: renumber[node.no as usize], ..*node });
            }
        }
        let roots: Vec<u32> = roots.iter().map(|&r| renumber[r as usize]).collect();
        let single = per_leaf
            .iter()
            .zip(&all)
            .filter(|(_, node)| node.mode == Mode::Leaf)
            .map(|(leaf, _)| match leaf[..] {
                [(0, w)] => Some(w),
                _ => None,
            })
            .collect::<Option<Vec<f32>>>();
        let uniform = match nodes.first() {
            Some(first) if nodes.iter().all(|n| n.mode == first.mode && !n.missing_yes) => Some(first.mode),
            _ => None,
        };

        let base = node.floats("base_values").to_vec();
        let post = post_of(node)?;
        let aggregate = node.text("aggregate_function").unwrap_or("SUM");
        let mut binary = Binary::No;
        if classifier {
            if !base.is_empty() && base.len() != scores && !(scores == 2 && base.len() == 1) {
                return Err(format!("{} base values for {scores} classes", base.len()));
            }
            let classes: std::collections::BTreeSet<u32> = weights.iter().map(|w| w.0).collect();
            if scores == 2 && classes.len() <= 1 {
                // The runtime keeps one score and derives the second from it.
                if classes.iter().any(|&c| c != 0) || base.len() > 1 {
                    return Err("two classes weighted on class 1 only, or with two base values".into());
                }
                let base = base.first().copied().unwrap_or(0.0);
                let positive = weights.iter().all(|w| w.1 >= 0.0);
                binary = match (positive, post) {
                    (false, Post::Logistic) => Binary::LogisticOfOne { base },
                    (true, Post::None) => Binary::ShareOfOne { base },
                    _ => return Err("a one-score binary classifier with this post transform".into()),
                };
            } else if scores == 2 {
                // Both scores must exist on every path, or the runtime's one-score rules apply.
                let both = leaves.iter().all(|&(start, end)| {
                    let leaf = &weights[start as usize..end as usize];
                    leaf.iter().any(|w| w.0 == 0) && leaf.iter().any(|w| w.0 == 1)
                });
                if !both || base.len() == 2 {
                    return Err("a binary classifier with a leaf missing a class, or two base values".into());
                }
                if base.len() == 1 {
                    return Err("a two-score binary classifier with one base value".into());
                }
            }
            if aggregate != "SUM" {
                return Err(format!("a classifier aggregating by {aggregate}"));
            }
        } else {
            if post != Post::None {
                return Err("a tree regressor with a post transform".into());
            }
            // For one target the runtime reads each leaf's first weight only.
            if scores == 1 && single.is_none() {
                return Err("a one-target regressor whose leaves do not hold one weight each".into());
            }
            if !base.is_empty() && base.len() != scores {
                return Err(format!("{} base values for {scores} targets", base.len()));
            }
        }
        let average = match aggregate {
            "SUM" => false,
            "AVERAGE" => true,
            other => return Err(format!("aggregate_function {other}")),
        };
        Ok(Trees { nodes, roots, leaves, weights, single, uniform, scores, base, post, average, binary })
    }

    /// The leaf `row` reaches from `root`, by its index in `leaves`, for branches that all
    /// test with `holds(x, threshold)`.
    #[inline(always)]
    fn reach(&self, root: u32, row: &[f32], holds: impl Fn(f32, f32) -> bool) -> usize {
        let mut i = root;
        while i & LEAF == 0 {
            let n = &self.nodes[i as usize];
            i = if holds(row[n.feature as usize], n.threshold) { n.yes } else { n.no };
        }
        (i & !LEAF) as usize
    }

    /// [`Trees::reach`] for mixed split rules and missing values sent the test's way.
    fn reach_mixed(&self, root: u32, row: &[f32]) -> usize {
        let mut i = root;
        while i & LEAF == 0 {
            let n = &self.nodes[i as usize];
            let (x, t) = (row[n.feature as usize], n.threshold);
            let holds = match n.mode {
                Mode::Leq => x <= t,
                Mode::Lt => x < t,
                Mode::Gte => x >= t,
                Mode::Gt => x > t,
                Mode::Eq => x == t,
                Mode::Neq => x != t,
                Mode::Leaf => unreachable!("leaves are tagged, never walked to"),
            };
            i = if holds || (n.missing_yes && x.is_nan()) { n.yes } else { n.no };
        }
        (i & !LEAF) as usize
    }

    /// Adds every tree's leaf to `scores`, trees in order, as the runtime sums them for one row
    /// on one thread.
    #[inline(always)]
    fn sum(&self, scores: &mut [f32], reach: impl Fn(u32) -> usize) {
        match &self.single {
            Some(single) => {
                let mut s = 0.0;
                for &root in &self.roots {
                    s += single[reach(root)];
                }
                scores[0] += s;
            }
            None => {
                for &root in &self.roots {
                    let (start, end) = self.leaves[reach(root)];
                    for &(id, w) in &self.weights[start as usize..end as usize] {
                        scores[id as usize] += w;
                    }
                }
            }
        }
    }

    fn run(&self, row: &[f32], out: &mut [f32]) {
        let scores = &mut out[..self.scores];
        scores.fill(0.0);
        match self.uniform {
            Some(Mode::Leq) => self.sum(scores, |r| self.reach(r, row, |x, t| x <= t)),
            Some(Mode::Lt) => self.sum(scores, |r| self.reach(r, row, |x, t| x < t)),
            Some(Mode::Gte) => self.sum(scores, |r| self.reach(r, row, |x, t| x >= t)),
            Some(Mode::Gt) => self.sum(scores, |r| self.reach(r, row, |x, t| x > t)),
            _ => self.sum(scores, |r| self.reach_mixed(r, row)),
        }
        match self.binary {
            Binary::LogisticOfOne { base } => {
                let s = out[0] + base;
                out[0] = logistic(-s);
                out[1] = logistic(s);
            }
            Binary::ShareOfOne { base } => {
                let s = out[0] + base;
                out[0] = 1.0 - s;
                out[1] = s;
            }
            Binary::No => {
                let trees = self.roots.len() as f32;
                for (k, s) in out.iter_mut().enumerate() {
                    if self.average {
                        *s /= trees;
                    }
                    if let Some(b) = self.base.get(k) {
                        *s += b;
                    }
                }
                transform(self.post, out);
            }
        }
    }
}

/// No walk from a root (children by position) comes back to a node on its own path, so every
/// walk ends at a leaf. Converters may share a subtree between parents (LightGBM's categorical
/// splits do): that is a graph, not a tree, and evaluates the same way.
fn check_trees(nodes: &[Node], roots: &[u32]) -> Result<(), String> {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; nodes.len()];
    // Depth first, without recursion: (node, its children already pushed).
    let mut stack: Vec<(u32, bool)> = roots.iter().map(|&r| (r, false)).collect();
    while let Some((i, expanded)) = stack.pop() {
        let i = i as usize;
        if expanded {
            state[i] = DONE;
            continue;
        }
        match state[i] {
            DONE => continue,
            ON_PATH => return Err("a tree loops back on itself".into()),
            _ => {}
        }
        state[i] = ON_PATH;
        stack.push((i as u32, true));
        let n = &nodes[i];
        if n.mode != Mode::Leaf {
            for child in [n.yes, n.no] {
                match state[child as usize] {
                    ON_PATH => return Err("a tree loops back on itself".into()),
                    NEW => stack.push((child, false)),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onnx::{AttributeProto, GraphProto, ValueInfoProto};

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), ints: v.to_vec(), ..Default::default() }
    }
    fn floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto { name: name.into(), floats: v.to_vec(), ..Default::default() }
    }
    fn texts(name: &str, v: &[&str]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
    }
    fn text(name: &str, v: &str) -> AttributeProto {
        AttributeProto { name: name.into(), s: v.as_bytes().to_vec(), ..Default::default() }
    }

    /// A model file: `input` -> `op` -> (label, scores) -> Identity -> `out`.
    fn model(op: &str, attribute: Vec<AttributeProto>) -> Vec<u8> {
        let classifier = op.ends_with("Classifier");
        let node = NodeProto {
            input: vec!["input".into()],
            output: if classifier { vec!["label".into(), "scores".into()] } else { vec!["scores".into()] },
            op_type: op.into(),
            domain: ML.into(),
            attribute,
        };
        let identity = NodeProto {
            input: vec!["scores".into()],
            output: vec!["out".into()],
            op_type: "Identity".into(),
            ..Default::default()
        };
        let graph = GraphProto {
            node: vec![node, identity],
            input: vec![ValueInfoProto { name: "input".into() }],
            output: vec![ValueInfoProto { name: "out".into() }],
            ..Default::default()
        };
        ModelProto { graph: Some(graph), ..Default::default() }.encode_to_vec()
    }

    /// Two trees on two features. Tree 0: x0 <= 1 (missing goes yes) ? 0.5 : (x1 < 2 ? -1 : 2).
    /// Tree 1: x1 == 3 ? 0.25 : 0.
    fn trees(op: &str, mode0: &str, extra: Vec<AttributeProto>) -> Vec<u8> {
        let prefix = if op.ends_with("Classifier") { "class" } else { "target" };
        let mut a = vec![
            ints("nodes_treeids", &[0, 0, 0, 0, 0, 1, 1, 1]),
            ints("nodes_nodeids", &[0, 1, 2, 3, 4, 0, 1, 2]),
            ints("nodes_featureids", &[0, 0, 1, 0, 0, 1, 0, 0]),
            floats("nodes_values", &[1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0]),
            texts("nodes_modes", &[mode0, "LEAF", "BRANCH_LT", "LEAF", "LEAF", "BRANCH_EQ", "LEAF", "LEAF"]),
            ints("nodes_truenodeids", &[1, 0, 3, 0, 0, 1, 0, 0]),
            ints("nodes_falsenodeids", &[2, 0, 4, 0, 0, 2, 0, 0]),
            ints("nodes_missing_value_tracks_true", &[1, 0, 0, 0, 0, 0, 0, 0]),
            ints(&format!("{prefix}_treeids"), &[0, 0, 0, 1, 1]),
            ints(&format!("{prefix}_nodeids"), &[1, 3, 4, 1, 2]),
            ints(&format!("{prefix}_ids"), &[0, 0, 0, 0, 0]),
            floats(&format!("{prefix}_weights"), &[0.5, -1.0, 2.0, 0.25, 0.0]),
        ];
        a.extend(extra);
        model(op, a)
    }

    fn score(native: &Native, row: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; native.outputs()];
        native.run(row, &mut out);
        out
    }

    #[test]
    fn a_tree_regressor_follows_every_split_rule() {
        let m = Native::compile(&trees("TreeEnsembleRegressor", "BRANCH_LEQ", vec![]), "out", 2).unwrap();
        assert_eq!(score(&m, &[1.0, 0.0]), [0.5], "x0 <= 1 holds at the threshold");
        assert_eq!(score(&m, &[1.5, 1.9]), [-1.0]);
        assert_eq!(score(&m, &[1.5, 2.0]), [2.0], "x1 < 2 fails at the threshold");
        assert_eq!(score(&m, &[1.5, 3.0]), [2.25], "x1 == 3 in tree 1");
        assert_eq!(score(&m, &[f32::NAN, 3.0]), [0.75], "a missing x0 goes the tracked way");
        assert_eq!(score(&m, &[1.5, f32::NAN]), [2.0], "an untracked missing value fails the test");
        let m = Native::compile(&trees("TreeEnsembleRegressor", "BRANCH_GT", vec![]), "out", 2).unwrap();
        assert_eq!(score(&m, &[1.0, 0.0]), [-1.0], "x0 > 1 fails at the threshold");
        let average = vec![text("aggregate_function", "AVERAGE"), floats("base_values", &[10.0])];
        let m = Native::compile(&trees("TreeEnsembleRegressor", "BRANCH_LEQ", average), "out", 2).unwrap();
        assert_eq!(score(&m, &[1.5, 3.0]), [11.125], "the mean of the trees, then the base value");
    }

    #[test]
    fn a_boosted_binary_classifier_gives_both_probabilities() {
        let extra = vec![
            ints("classlabels_int64s", &[0, 1]),
            text("post_transform", "LOGISTIC"),
            floats("base_values", &[-0.5]),
        ];
        let m = Native::compile(&trees("TreeEnsembleClassifier", "BRANCH_LEQ", extra), "out", 2).unwrap();
        let p = score(&m, &[1.5, 3.0]);
        let s = 2.25f32 - 0.5;
        let expected = 1.0 / (1.0 + (-s).exp());
        assert!((p[1] - expected).abs() < 1e-7 && (p[0] + p[1] - 1.0).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn a_linear_model_scores_each_target() {
        let attrs = vec![
            floats("coefficients", &[1.0, 2.0, -1.0, -2.0]),
            floats("intercepts", &[0.5, -0.5]),
            ints("classlabels_ints", &[0, 1]),
            text("post_transform", "SOFTMAX"),
        ];
        let m = Native::compile(&model("LinearClassifier", attrs), "out", 2).unwrap();
        let p = score(&m, &[1.0, 1.0]);
        let (a, b) = (3.5f32, -3.5f32);
        assert!((p[0] - 1.0 / (1.0 + (b - a).exp())).abs() < 1e-6 && (p[0] + p[1] - 1.0).abs() < 1e-6, "{p:?}");
        let attrs = vec![floats("coefficients", &[1.0, 2.0]), floats("intercepts", &[0.5])];
        let m = Native::compile(&model("LinearRegressor", attrs), "out", 2).unwrap();
        assert_eq!(score(&m, &[3.0, -1.0]), [1.5]);
    }

    #[test]
    fn graphs_outside_the_covered_forms_are_left_to_the_runtime() {
        let reason = |bytes: &[u8], width| Native::compile(bytes, "out", width).unwrap_err();
        assert!(reason(b"\xff\xff", 2).contains("unreadable"));
        let r = trees("TreeEnsembleRegressor", "BRANCH_LEQ", vec![]);
        assert!(reason(&r, 1).contains("feature 1 of 1"), "{}", reason(&r, 1));
        assert!(reason(&trees("TreeEnsembleRegressor", "BRANCH_ODD", vec![]), 2).contains("BRANCH_ODD"));
        let probit = vec![ints("classlabels_int64s", &[0, 1]), text("post_transform", "PROBIT")];
        assert!(reason(&trees("TreeEnsembleClassifier", "BRANCH_LEQ", probit), 2).contains("PROBIT"));
        assert!(Native::compile(&r, "scores", 2).is_ok(), "the operator's own output is fine too");
        assert!(Native::compile(&r, "label", 2).unwrap_err().contains("no node computes"));
        // A node that loops back up is not a tree: evaluating it would never end.
        let mut looped = ModelProto::decode(&*r).unwrap();
        let node = &mut looped.graph.as_mut().unwrap().node[0];
        node.attribute.iter_mut().find(|a| a.name == "nodes_falsenodeids").unwrap().ints[2] = 0;
        assert!(reason(&looped.encode_to_vec(), 2).contains("loops back"));
        // Two parents sharing a child is fine: tree 0's `x1 < 2` test sends both ways to node 3.
        let mut shared = ModelProto::decode(&*r).unwrap();
        let node = &mut shared.graph.as_mut().unwrap().node[0];
        node.attribute.iter_mut().find(|a| a.name == "nodes_falsenodeids").unwrap().ints[2] = 3;
        let m = Native::compile(&shared.encode_to_vec(), "out", 2).unwrap();
        assert_eq!(score(&m, &[1.5, 2.5]), [-1.0]);
        let mut scaled = ModelProto::decode(&*r).unwrap();
        let graph = scaled.graph.as_mut().unwrap();
        graph.node[0].input[0] = "scaled".into();
        graph.node.push(NodeProto {
            input: vec!["input".into()],
            output: vec!["scaled".into()],
            op_type: "Scaler".into(),
            domain: ML.into(),
            attribute: vec![],
        });
        assert!(reason(&scaled.encode_to_vec(), 2).contains("does not read the graph input"));
    }

    #[test]
    fn probe_rows_sit_on_and_beside_every_threshold() {
        let m = Native::compile(&trees("TreeEnsembleRegressor", "BRANCH_LEQ", vec![]), "out", 2).unwrap();
        let rows = m.probe(256);
        assert_eq!(rows.len(), 512);
        let bits = |r: Vec<f32>| r.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(rows.clone()), bits(m.probe(256)), "the same rows every time");
        let column = |j: usize| rows.iter().skip(j).step_by(2).copied().collect::<Vec<f32>>();
        for (j, t) in [(0, 1.0f32), (1, 2.0), (1, 3.0)] {
            let c = column(j);
            assert!(
                c.contains(&t) && c.iter().any(|&x| x > t && x - t < 1e-6) && c.iter().any(|&x| x < t && t - x < 1e-6)
            );
            assert!(c.iter().any(|x| x.is_nan()), "feature {j}: a missing value");
        }
    }
}
