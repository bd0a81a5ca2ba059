//! Small helpers shared by the commands: the project root, polling with a deadline.

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};

/// The workspace root (the folder holding `xtask/`).
pub fn project_root() -> PathBuf {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    PathBuf::from(dir).parent().unwrap().to_path_buf()
}

/// Calls `f` until it succeeds or `timeout` passes; on timeout returns the last error, saying
/// what was awaited and for how long.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        match f() {
            Ok(value) => return Ok(value),
            Err(err) if start.elapsed() >= timeout => {
                return Err(anyhow!(err).context(format!(
                    "{what}: still failing after {:.1} s",
                    start.elapsed().as_secs_f64()
                )));
            }
            Err(_) => {
                thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// `println!` that never panics: when stdout is gone (`cargo xtask switch | head -1`, a closed
/// CI log pipe), the operation still finishes and records its state instead of dying halfway.
#[macro_export]
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
