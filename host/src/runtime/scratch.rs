//! Scratch space: a fresh directory per call for plugins that declare `scratch`, removed when
//! the call ends.
//!
//! The host opens the scratch root once, at start, as a cap-std [`Dir`] beside the store, and
//! creates and removes each call's directory through it; the directory's name is the call's
//! number, never anything a plugin or a caller chose, so no path can leave the root. WASI
//! preopens the directory (and only it) at `/scratch` in the call's instance.
//!
//! Scratch directories have no byte quota of their own: a call can fill the disk up to what
//! the server's filesystem allows during its deadline.
//! TODO: a quota needs a filesystem wrapper under wasmtime-wasi's `Dir`; until then, put the
//! data directory on a filesystem sized for it.

use std::path::{Path, PathBuf};

use cap_std::fs::Dir;

/// Name of the scratch root inside the data directory.
const ROOT: &str = "scratch";

/// The root under which each call's scratch directory is made.
pub struct ScratchRoot {
    dir: Dir,
    path: PathBuf,
}

/// One call's scratch directory; removed on drop.
pub struct CallScratch<'a> {
    root: &'a ScratchRoot,
    name: String,
}

impl ScratchRoot {
    /// Opens (creating) `scratch/` in the data directory, and clears what a crashed run left.
    pub fn open(data_dir: &Dir, data_path: &Path) -> std::io::Result<Self> {
        if data_dir.exists(ROOT) {
            data_dir.remove_dir_all(ROOT)?;
        }
        data_dir.create_dir(ROOT)?;
        Ok(Self {
            dir: data_dir.open_dir(ROOT)?,
            path: data_path.join(ROOT),
        })
    }

    /// Makes the empty directory of call number `call`.
    pub fn for_call(&self, call: u64) -> std::io::Result<CallScratch<'_>> {
        let name = format!("call-{call}");
        self.dir.create_dir(&name)?;
        Ok(CallScratch { root: self, name })
    }
}

impl CallScratch<'_> {
    /// The directory's host path, for WASI to preopen.
    pub fn host_path(&self) -> PathBuf {
        self.root.path.join(&self.name)
    }
}

impl Drop for CallScratch<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.root.dir.remove_dir_all(&self.name) {
            tracing::warn!(directory = %self.name, error = %err, "cannot remove a call's scratch directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use cap_std::ambient_authority;

    use super::*;

    #[test]
    fn a_call_directory_is_empty_at_first_and_gone_afterwards() {
        let temp = tempfile::tempdir().unwrap();
        let data = Dir::open_ambient_dir(temp.path(), ambient_authority()).unwrap();
        let root = ScratchRoot::open(&data, temp.path()).unwrap();

        let scratch = root.for_call(7).unwrap();
        let path = scratch.host_path();
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
        std::fs::write(path.join("file"), b"left behind?").unwrap();
        drop(scratch);

        assert!(!path.exists());
    }

    #[test]
    fn opening_clears_what_a_previous_run_left() {
        let temp = tempfile::tempdir().unwrap();
        let data = Dir::open_ambient_dir(temp.path(), ambient_authority()).unwrap();
        std::fs::create_dir_all(temp.path().join("scratch/call-1")).unwrap();

        ScratchRoot::open(&data, temp.path()).unwrap();

        assert!(!temp.path().join("scratch/call-1").exists());
    }
}
