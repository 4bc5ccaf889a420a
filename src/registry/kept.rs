//! Versions kept warm besides the live one: listed version directories and/or the N most
//! recent ones, for version pins and comparisons. A kept version that fails to load is logged
//! and counted; it never affects the live version or readiness.

use std::sync::Arc;

use super::{CURRENT, Registry, Task};
use crate::bundle::{Bundle, manifest::Identity};

impl Registry {
    /// Brings the kept versions of `task` in line with the configuration and the directories
    /// present, reusing bundles already loaded (kept, or retired but still held). `extra`
    /// names further version directories to keep (those a rollout policy names).
    pub(super) async fn sync_kept(&self, task: &str, slot: &Task, retry_bad: bool, extra: &[String]) {
        let wanted = self.wanted_versions(task, extra);
        let live = slot.live.load_full();
        let current = slot.kept.load_full();
        let mut next: Vec<Arc<Bundle>> = Vec::with_capacity(wanted.len());
        for identity in wanted {
            if live.as_ref().is_some_and(|b| b.is(&identity)) {
                continue; // the live bundle answers for this version already
            }
            if let Some(b) = current.iter().find(|b| b.is(&identity)).cloned().or_else(|| self.retired(&identity)) {
                next.push(b);
                continue;
            }
            if !retry_bad && self.lock(slot).failed_kept.contains(&identity) {
                continue;
            }
            match self.inner.loader.load(task, &identity, self.inner.options.load, &self.inner.metrics, true).await {
                Ok(bundle) => {
                    tracing::info!(task, version = %bundle.version, path = %bundle.path.display(), "version kept warm");
                    self.lock(slot).failed_kept.retain(|i| i != &identity);
                    next.push(bundle);
                }
                Err(error) => {
                    self.inner.metrics.reloads.with_label_values(&[task, "failure"]).inc();
                    tracing::warn!(task, error = %error, result = "failure", "version to keep warm rejected");
                    let mut status = self.lock(slot);
                    if !status.failed_kept.contains(&identity) {
                        status.failed_kept.push(identity);
                    }
                }
            }
        }
        let same = next.len() == current.len() && next.iter().zip(current.iter()).all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            let replaced = slot.kept.swap(Arc::new(next));
            for old in replaced.iter().filter(|b| !slot.kept.load().iter().any(|n| Arc::ptr_eq(n, b))) {
                self.retire(old.clone());
            }
            self.changed();
        }
        let loaded = i64::from(slot.live.load().is_some()) + slot.kept.load().len() as i64;
        self.inner.metrics.loaded_versions.with_label_values(&[task]).set(loaded);
    }

    /// Identities of the version directories the configuration asks to keep, in name order.
    fn wanted_versions(&self, task: &str, extra: &[String]) -> Vec<Identity> {
        let options = &self.inner.options;
        let dir = self.inner.root.join(task);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != CURRENT && !n.starts_with('.') && !n.ends_with(".tmp"))
            .filter(|n| dir.join(n).is_dir())
            .collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        let recent_from = names.len().saturating_sub(options.keep_recent);
        names
            .iter()
            .enumerate()
            .filter(|(i, n)| *i >= recent_from || options.keep_versions.contains(n) || extra.contains(n))
            .filter_map(|(_, n)| Identity::of(&dir.join(n)).ok())
            .collect()
    }
}

/// Orders version names so that `v2` < `v10`: digit runs compare by value.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.len() - a.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let db = b.len() - b.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let (na, nb) = (a[..da].trim_start_matches('0'), b[..db].trim_start_matches('0'));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
                (a, b) = (&a[da..], &b[db..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn versions_sort_naturally() {
        let mut v = vec!["v10", "v2", "v1", "v2b", "v02"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["v1", "v2", "v02", "v2b", "v10"]);
    }
}
