//! ONNX Runtime sessions for one model and the mapping of their outputs; for the graphs it
//! covers, a native evaluator ([`native`]) that the runtime checks before it answers calls.
//!
//! `Session::run` needs `&mut self`, so an [`Engine`] keeps a small pool of sessions, one per
//! allowed concurrent run. Callers bound concurrency above this module (a semaphore with as many
//! permits as there are sessions), so a free session is always found without waiting; the
//! mutexes only make that safe. The native evaluator needs neither: it only reads its arrays,
//! so runs share it, and the pool shrinks to the one session it was checked against. Each session runs single-threaded on the calling thread:
//! a tabular row costs microseconds, far less than handing work to an intra-op pool.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use ort::{
    environment::Environment,
    session::{
        HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue, SessionOutputs,
        builder::GraphOptimizationLevel,
    },
    value::{Tensor, TensorElementType, TensorRef, ValueType},
};

use native::Native;

mod native;
mod onnx;

/// The element type of a raw-input model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputType {
    String,
    Int64,
    Float,
    Double,
}

impl InputType {
    pub fn name(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Int64 => "int64",
            InputType::Float => "float",
            InputType::Double => "double",
        }
    }
}

/// One model input's values for a batch of rows (the raw-input form).
#[derive(Debug, Clone)]
pub enum InputColumn {
    /// Strings end to end in one buffer: `ends[i]` is where row i's text ends.
    Text {
        bytes: String,
        ends: Vec<usize>,
    },
    Int64(Vec<i64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
}

impl InputColumn {
    pub fn len(&self) -> usize {
        match self {
            InputColumn::Text { ends, .. } => ends.len(),
            InputColumn::Int64(v) => v.len(),
            InputColumn::Float(v) => v.len(),
            InputColumn::Double(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the values of rows from `rows` on (a row that failed half way).
    pub fn truncate(&mut self, rows: usize) {
        match self {
            InputColumn::Text { bytes, ends } => {
                ends.truncate(rows);
                bytes.truncate(ends.last().copied().unwrap_or(0));
            }
            InputColumn::Int64(v) => v.truncate(rows),
            InputColumn::Float(v) => v.truncate(rows),
            InputColumn::Double(v) => v.truncate(rows),
        }
    }

    /// The texts of a string column, in row order.
    pub fn texts(&self) -> Vec<&str> {
        match self {
            InputColumn::Text { bytes, ends } => {
                let mut start = 0;
                ends.iter()
                    .map(|&end| {
                        let t = &bytes[start..end];
                        start = end;
                        t
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    pub(crate) fn push_text(&mut self, text: &str) {
        if let InputColumn::Text { bytes, ends } = self {
            bytes.push_str(text);
            ends.push(bytes.len());
        }
    }

    pub(crate) fn push_number(&mut self, x: f64) {
        match self {
            InputColumn::Int64(v) => v.push(x as i64),
            InputColumn::Float(v) => v.push(x as f32),
            InputColumn::Double(v) => v.push(x),
            InputColumn::Text { .. } => {}
        }
    }
}

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("ONNX Runtime library {0} not found (run scripts/fetch-onnxruntime.sh or set MODELD_ORT_LIBRARY)")]
    LibraryMissing(PathBuf),
    #[error("cannot load the ONNX Runtime library {path}: {source}")]
    Library {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    #[error("cannot start ONNX Runtime: {0}")]
    Environment(#[source] ort::Error),
    #[error("ONNX Runtime is not initialised (call engine::init first)")]
    NoRuntime,
    #[error("cannot open model {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
    #[error("model {path}: {reason}")]
    Signature { path: PathBuf, reason: String },
    #[error("model run failed: {0}")]
    Run(#[source] ort::Error),
    #[error("model output `{name}`: {reason}")]
    Output { name: String, reason: String },
}

static RUNTIME: OnceLock<Environment> = OnceLock::new();
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

/// Loads the ONNX Runtime shared library once per process. Later calls are no-ops.
pub fn init(library: &Path) -> Result<(), EngineError> {
    let _serialise = RUNTIME_INIT.lock().unwrap_or_else(|p| p.into_inner());
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    if !library.is_file() {
        return Err(EngineError::LibraryMissing(library.to_owned()));
    }
    let builder =
        ort::init_from(library).map_err(|source| EngineError::Library { path: library.to_owned(), source })?;
    let env = builder.with_name("modeld").with_telemetry(false).build().map_err(EngineError::Environment)?;
    let _ = RUNTIME.set(env);
    Ok(())
}

/// The version of the ONNX Runtime library `library` is, as its file name says after links are
/// followed (`libonnxruntime.so.1.31.1`), or as its build information says (release builds name
/// their branch `rel-1.31.1`); "unknown" when neither does. The library's own version call is
/// out of reach without unsafe code.
pub fn runtime_version(library: &Path) -> String {
    let named = library
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.split_once(".so.").map(|(_, v)| v.to_owned()))
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'));
    let built = || {
        RUNTIME.get()?;
        ort::info()
            .split(|c: char| c == ',' || c.is_whitespace())
            .find_map(|part| part.strip_prefix("git-branch=rel-"))
            .map(str::to_owned)
    };
    named.or_else(built).unwrap_or_else(|| "unknown".to_owned())
}

/// How sessions are built.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Sessions in the pool = model runs that may proceed at once.
    pub sessions: usize,
    /// Intra-op threads per session; 1 runs on the caller's thread.
    pub intra_threads: usize,
    /// Evaluate covered graphs natively once they agree with the runtime (see [`native`]).
    pub native: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { sessions: 1, intra_threads: 1, native: true }
    }
}

/// One session, with run options that fetch only the output modeld reads: a classifier's label
/// output is left inside the runtime rather than handed out and released on every run.
struct Slot {
    session: Session,
    options: RunOptions<HasSelectedOutputs>,
    /// One-row runs of the matrix form (a unary call's usual shape): an input tensor and an
    /// output tensor kept for every run, so the runtime allocates and frees neither.
    single: Option<Single>,
}

struct Single {
    input: Tensor<f32>,
    options: RunOptions<HasSelectedOutputs>,
}

impl Single {
    /// Runs `row` (one row's `width` values) through the kept tensors.
    fn run<'s>(&'s mut self, session: &'s mut Session, row: &[f32]) -> Result<SessionOutputs<'s>, EngineError> {
        self.input.try_extract_tensor_mut().map_err(EngineError::Run)?.1.copy_from_slice(row);
        session.run_with_options(ort::inputs![&self.input], &self.options).map_err(EngineError::Run)
    }
}

/// A model ready to run: its sessions and its checked signature.
pub struct Engine {
    sessions: Box<[Mutex<Slot>]>,
    /// The matrix form's one input; empty for a raw-input model.
    input: String,
    width: usize,
    /// A raw-input model's inputs in the schema's field order: name, and whether it is `[N, 1]`
    /// (else `[N]`).
    feeds: Vec<(String, bool)>,
    output: String,
    /// Answers matrix-form runs in place of the sessions, when the model allows it.
    native: Option<Native>,
    /// Which evaluator answers, and why, for the load log.
    evaluator: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("sessions", &self.sessions.len())
            .field("input", &self.input)
            .field("width", &self.width)
            .field("native", &self.native.is_some())
            .finish()
    }
}

/// The read output of one run, borrowed from the session for the duration of a callback.
pub struct Outputs<'a> {
    /// Row-major `[rows, width]`.
    pub data: &'a [f32],
    /// Values per row: 1 for an `[N]` output.
    pub width: usize,
}

impl Engine {
    /// Opens the model in `bytes` (read from `path`, named in errors) with `options.sessions`
    /// sessions (one when the native evaluator answers) and checks its signature: one float32 input `[N, F]` and the float32 output
    /// `output` (`[N]` or `[N, K]`). Taking bytes lets the caller load exactly the bytes whose
    /// checksum it verified.
    ///
    /// With `inputs` (a raw-input schema's model inputs), the model must instead have exactly
    /// those inputs, each of its element type and shaped `[N]` or `[N, 1]`.
    pub fn load(
        path: &Path,
        bytes: &[u8],
        output: &str,
        inputs: &[(String, InputType)],
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let env = RUNTIME.get().ok_or(EngineError::NoRuntime)?;
        let model = path;
        let open = |source| EngineError::Open { path: model.to_owned(), source };
        let signature = |reason: String| EngineError::Signature { path: model.to_owned(), reason };
        // One session first: it tells the signature, and checks a native evaluator. The rest of
        // the pool is built only if the runtime is to answer calls.
        let session = build_session(env, bytes, options.intra_threads).map_err(open)?;
        let first = &session;
        let feeds = if inputs.is_empty() { Vec::new() } else { check_inputs(first, inputs).map_err(signature)? };
        check_output(first, output).map_err(signature)?;
        let outputs_per_row = output_width(first, output);
        let slot = |session: Session, width: usize| -> Result<Mutex<Slot>, EngineError> {
            let make = || {
                let options = RunOptions::new()?.with_outputs(OutputSelector::no_default().with(output));
                let single = match outputs_per_row {
                    Some(k) if width > 0 => {
                        let allocator = ort::memory::Allocator::default();
                        let input = Tensor::<f32>::new(&allocator, [1, width])?;
                        let out = Tensor::<f32>::new(&allocator, k.map_or(vec![1], |k| vec![1, k]))?;
                        let selector = OutputSelector::no_default().with(output).preallocate(output, out);
                        Some(Single { input, options: RunOptions::new()?.with_outputs(selector) })
                    }
                    _ => None,
                };
                Ok(Slot { session, options, single })
            };
            make().map(Mutex::new).map_err(EngineError::Run)
        };
        // The first session's slot and as many more as `options.sessions` asks for.
        let pool = |first: Mutex<Slot>, width: usize| -> Result<Box<[Mutex<Slot>]>, EngineError> {
            let mut slots = vec![first];
            while slots.len() < options.sessions.max(1) {
                slots.push(slot(build_session(env, bytes, options.intra_threads).map_err(open)?, width)?);
            }
            Ok(slots.into_boxed_slice())
        };
        if !feeds.is_empty() {
            return Ok(Engine {
                sessions: pool(slot(session, 0)?, 0)?,
                input: String::new(),
                width: 0,
                feeds,
                output: output.to_owned(),
                native: None,
                evaluator: "ONNX Runtime (raw inputs)".to_owned(),
            });
        }
        let [input] = first.inputs() else {
            return Err(signature(format!("expected one input, found {}", first.inputs().len())));
        };
        let width = match input.dtype() {
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } if shape.len() == 2 && shape[1] > 0 => {
                shape[1] as usize
            }
            other => {
                return Err(signature(format!(
                    "input `{}` must be float32 [N, F] with a fixed F, found {other}",
                    input.name()
                )));
            }
        };
        let input = input.name().to_owned();
        if !options.native {
            let evaluator = "ONNX Runtime (native evaluation off)".to_owned();
            let sessions = pool(slot(session, width)?, width)?;
            return Ok(Engine {
                sessions,
                input,
                width,
                feeds: Vec::new(),
                output: output.to_owned(),
                native: None,
                evaluator,
            });
        }
        let first = slot(session, width)?;
        let checked = {
            let mut guard = first.lock().unwrap_or_else(|p| p.into_inner());
            let Slot { session, options, .. } = &mut *guard;
            checked_native(session, options, bytes, output, width)
        };
        let (sessions, native, evaluator) = match checked {
            // The kept session is the reference the evaluator was checked against; calls never
            // reach it.
            Ok((native, largest)) => {
                let evaluator = format!(
                    "native {}, agrees with ONNX Runtime on {PROBE_ROWS} probe rows (largest difference {largest:e})",
                    native.summary()
                );
                (Box::from([first]), Some(native), evaluator)
            }
            Err(why) => (pool(first, width)?, None, format!("ONNX Runtime ({why})")),
        };
        Ok(Engine { sessions, input, width, feeds: Vec::new(), output: output.to_owned(), native, evaluator })
    }

    /// Which evaluator answers this model's runs, and why: "native tree ensemble, ..." or
    /// "ONNX Runtime (reason)".
    pub fn evaluator(&self) -> &str {
        &self.evaluator
    }

    /// Whether the native evaluator answers this model's runs.
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// ONNX Runtime sessions kept: one, as the reference, when the native evaluator answers.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Number of columns the model expects.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Runs the encoded rows and hands the outputs to `read` while they are still borrowed from
    /// the session: no copy of the outputs is made.
    ///
    /// `rows` rows come as `data` (row-major, `rows * width` values) for the matrix form, or as
    /// `columns` (one per model input) for a raw-input model.
    pub fn run<T>(
        &self,
        rows: usize,
        data: &[f32],
        columns: &[InputColumn],
        read: impl FnOnce(Outputs<'_>) -> T,
    ) -> Result<T, EngineError> {
        if let Some(native) = &self.native {
            debug_assert_eq!(data.len(), rows * self.width);
            let width = native.outputs();
            // A unary call's few values stay on the stack.
            let mut inline = [0.0f32; 16];
            let mut heap = Vec::new();
            let out = if rows * width <= inline.len() {
                &mut inline[..rows * width]
            } else {
                heap.resize(rows * width, 0.0);
                &mut heap[..]
            };
            native.run(data, out);
            return Ok(read(Outputs { data: out, width }));
        }
        let mut slot = self.session();
        let Slot { session, options, single } = &mut *slot;
        let out = if let (1, Some(single)) = (rows, single.as_mut()) {
            single.run(session, data)?
        } else if self.feeds.is_empty() {
            debug_assert_eq!(data.len(), rows * self.width);
            let tensor = TensorRef::from_array_view(([rows, self.width], data)).map_err(EngineError::Run)?;
            session.run_with_options(ort::inputs![tensor], options).map_err(EngineError::Run)?
        } else {
            session.run_with_options(self.feed(rows, columns)?, options).map_err(EngineError::Run)?
        };
        let output_error = |reason: String| EngineError::Output { name: self.output.clone(), reason };
        let (shape, data) =
            out[self.output.as_str()].try_extract_tensor::<f32>().map_err(|e| output_error(e.to_string()))?;
        let width = match **shape {
            [n] if n as usize == rows => 1,
            [n, k] if n as usize == rows && k > 0 => k as usize,
            _ => return Err(output_error(format!("unexpected shape {shape:?} for {rows} rows"))),
        };
        Ok(read(Outputs { data, width }))
    }

    /// Runs the input once on every session (and its first row alone, as one-row calls run),
    /// so no session meets its first request cold; or through the native evaluator, which
    /// answers every call when there is one.
    pub fn warm_up(&self, rows: usize, data: &[f32], columns: &[InputColumn]) -> Result<(), EngineError> {
        if self.native.is_some() {
            return self.run(rows, data, columns, |_| ());
        }
        for slot in self.sessions.iter() {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            let Slot { session, options, single } = &mut *slot;
            if self.feeds.is_empty() {
                let tensor = TensorRef::from_array_view(([rows, self.width], data)).map_err(EngineError::Run)?;
                session.run_with_options(ort::inputs![tensor], options).map_err(EngineError::Run)?;
            } else {
                session.run_with_options(self.feed(rows, columns)?, options).map_err(EngineError::Run)?;
            }
            if let (Some(single), Some(row)) = (single.as_mut(), data.get(..self.width)) {
                single.run(session, row)?;
            }
        }
        Ok(())
    }

    /// A raw-input model's feeds: one tensor per input, numbers viewed in place, strings copied
    /// once into the runtime's string tensor.
    fn feed<'a>(
        &'a self,
        rows: usize,
        columns: &'a [InputColumn],
    ) -> Result<Vec<(&'a str, SessionInputValue<'a>)>, EngineError> {
        self.feeds
            .iter()
            .zip(columns)
            .map(|((name, column), values)| {
                let shape = if *column { vec![rows, 1] } else { vec![rows] };
                let value: SessionInputValue<'a> = match values {
                    InputColumn::Text { .. } => {
                        // The runtime copies each string into its own tensor memory; its
                        // constructor takes owned strings only.
                        let texts: Vec<String> = values.texts().into_iter().map(str::to_owned).collect();
                        Tensor::from_string_array((shape, &*texts))?.into()
                    }
                    InputColumn::Int64(v) => TensorRef::from_array_view((shape, &**v))?.into(),
                    InputColumn::Float(v) => TensorRef::from_array_view((shape, &**v))?.into(),
                    InputColumn::Double(v) => TensorRef::from_array_view((shape, &**v))?.into(),
                };
                Ok((name.as_str(), value))
            })
            .collect::<Result<_, ort::Error>>()
            .map_err(EngineError::Run)
    }

    /// The first free session. Callers hold a run permit, so one is normally free on the first
    /// pass; the blocking lock at the end is only a safety net. Trying them in order keeps the
    /// first session's memory warm in the cache when calls come one at a time.
    fn session(&self) -> std::sync::MutexGuard<'_, Slot> {
        for slot in self.sessions.iter() {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        self.sessions[0].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Probe rows a native evaluator must agree on with the runtime before it is used.
const PROBE_ROWS: usize = 256;

/// The native evaluator for the model in `bytes`, if its graph is one the evaluators cover and
/// it agrees with `session` on every value of [`PROBE_ROWS`] probe rows (relative difference at
/// most 1e-5: the two sum in different orders); with the largest difference seen. The error
/// says why the runtime answers instead.
fn checked_native(
    session: &mut Session,
    options: &RunOptions<HasSelectedOutputs>,
    bytes: &[u8],
    output: &str,
    width: usize,
) -> Result<(Native, f32), String> {
    let native = Native::compile(bytes, output, width)?;
    let rows = native.probe(PROBE_ROWS);
    let tensor = TensorRef::from_array_view(([PROBE_ROWS, width], &*rows)).map_err(|e| e.to_string())?;
    let out = session
        .run_with_options(ort::inputs![tensor], options)
        .map_err(|e| format!("the runtime failed on the probe rows: {e}"))?;
    let (shape, expected) = out[output].try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
    let k = native.outputs();
    match **shape {
        [n] if n as usize == PROBE_ROWS && k == 1 => {}
        [n, w] if n as usize == PROBE_ROWS && w as usize == k => {}
        _ => return Err(format!("the runtime's output is {shape:?}, the native evaluator's [{PROBE_ROWS}, {k}]")),
    }
    let mut got = vec![0.0; PROBE_ROWS * k];
    native.run(&rows, &mut got);
    let mut largest = 0.0f32;
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let difference = if g.is_nan() && e.is_nan() { 0.0 } else { (g - e).abs() };
        // Written so a NaN on one side only counts as a disagreement.
        let agrees = difference <= 1e-5 * e.abs().max(1.0);
        if !agrees {
            return Err(format!(
                "the native evaluator disagrees on probe row {}, output {}: {g} against the runtime's {e}",
                i / k,
                i % k
            ));
        }
        largest = largest.max(difference);
    }
    Ok((native, largest))
}

/// The model's inputs must be exactly `expected` (any order), each of its element type, shaped
/// `[N]` or `[N, 1]`. Returns the feeds in `expected` order.
fn check_inputs(session: &Session, expected: &[(String, InputType)]) -> Result<Vec<(String, bool)>, String> {
    let model: Vec<_> = session.inputs().iter().map(|i| i.name().to_owned()).collect();
    if let Some(extra) = model.iter().find(|m| !expected.iter().any(|(e, _)| e == *m)) {
        return Err(format!("input `{extra}` is fed by no schema field (the model's inputs: {model:?})"));
    }
    expected
        .iter()
        .map(|(name, ty)| {
            let input =
                session.inputs().iter().find(|i| i.name() == name.as_str()).ok_or_else(|| {
                    format!("the schema feeds input `{name}`, which the model does not have ({model:?})")
                })?;
            let want = match ty {
                InputType::String => TensorElementType::String,
                InputType::Int64 => TensorElementType::Int64,
                InputType::Float => TensorElementType::Float32,
                InputType::Double => TensorElementType::Float64,
            };
            match input.dtype() {
                ValueType::Tensor { ty: found, shape, .. } if *found == want => match shape.len() {
                    1 => Ok((name.clone(), false)),
                    2 if matches!(shape[1], 1 | -1) => Ok((name.clone(), true)),
                    _ => Err(format!("input `{name}` must be [N] or [N, 1], found {shape:?}")),
                },
                other => Err(format!("input `{name}` must be a {} tensor, found {other}", ty.name())),
            }
        })
        .collect()
}

/// The one output modeld reads: a float32 `[N]` or `[N, K]` tensor.
fn check_output(session: &Session, output: &str) -> Result<(), String> {
    match session.outputs().iter().find(|o| o.name() == output).map(|o| o.dtype()) {
        Some(ValueType::Tensor { ty: TensorElementType::Float32, shape, .. }) if matches!(shape.len(), 1 | 2) => Ok(()),
        Some(ValueType::Sequence(_)) => Err(format!(
            "output `{output}` is a sequence of maps (a ZipMap); export it with zipmap disabled so it is a float32 \
             [N, C] tensor"
        )),
        Some(other) => Err(format!("output `{output}` must be a float32 [N] or [N, K] tensor, found {other}")),
        None => {
            let names: Vec<_> = session.outputs().iter().map(|o| o.name().to_owned()).collect();
            Err(format!("no output named `{output}` (the model has {names:?})"))
        }
    }
}

/// The shape of one row's `output` when the model fixes it: `Some(None)` for `[N]`,
/// `Some(Some(k))` for `[N, k]`; None when only a run tells.
fn output_width(session: &Session, output: &str) -> Option<Option<usize>> {
    match session.outputs().iter().find(|o| o.name() == output).map(|o| o.dtype()) {
        Some(ValueType::Tensor { shape, .. }) => match **shape {
            [_] => Some(None),
            [_, k] if k > 0 => Some(Some(k as usize)),
            _ => None,
        },
        _ => None,
    }
}

/// Builder errors are not `Send`, so the whole build happens here and only `ort::Error` leaves.
fn build_session(env: &Environment, model: &[u8], intra_threads: usize) -> ort::Result<Session> {
    Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(intra_threads.max(1))?
        .with_inter_threads(1)?
        .with_parallel_execution(false)?
        .commit_from_memory(model)
}
