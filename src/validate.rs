//! `modeld validate <dir>`: every load check on one bundle, as a printed report.
//!
//! It calls the same [`Bundle::load`](crate::bundle::Bundle::load_reporting) the registry uses,
//! so a bundle that validates is a bundle the daemon will accept.

use std::{io::Write, path::Path};

use crate::{
    bundle::{Bundle, LoadOptions},
    engine,
};

/// Runs the checks and writes the report to `out`; returns whether the bundle passed.
pub fn run(dir: &Path, ort_library: &Path, out: &mut dyn Write) -> std::io::Result<bool> {
    writeln!(out, "validating {}", dir.display())?;
    if let Err(e) = engine::init(ort_library) {
        writeln!(out, "FAIL runtime: {e}")?;
        return Ok(false);
    }
    let mut lines = Vec::new();
    let result = Bundle::load_reporting(dir, &LoadOptions::default(), &mut |step| {
        lines.push(format!("  ok   {:<9} {:>8.1} ms  {}", step.name, step.took.as_secs_f64() * 1e3, step.detail));
    });
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    match result {
        Ok(bundle) => {
            writeln!(out, "PASS {} (version {}, manifest {})", dir.display(), bundle.version, bundle.manifest_sha256)?;
            Ok(true)
        }
        Err(e) => {
            writeln!(out, "FAIL {}: {e}", dir.display())?;
            Ok(false)
        }
    }
}
