//! The host state directory's file operations, each atomic for readers (nginx's workers and
//! other operations): the same contract as the deploy tool's `HostDir` trait, done with
//! `rename(2)` on the host itself.
//!
//! Paths are relative to the state directory, `/`-separated, and may not leave it.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{symlink, PermissionsExt},
    path::{Component, Path, PathBuf},
};

/// What a link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Missing,
    To(String),
    Broken(String),
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Dir {
    root: PathBuf,
}

/// A temporary name beside `path`, unique to this process.
fn temp_beside(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

impl Dir {
    pub fn new(root: PathBuf) -> Dir {
        Dir { root }
    }

    /// `rel` under the root; refused when empty, absolute, or leaving the root.
    pub fn path(&self, rel: &str) -> io::Result<PathBuf> {
        let relative = Path::new(rel);
        let plain = !rel.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{rel:?} is not a plain path inside the state directory"),
            ));
        }
        Ok(self.root.join(relative))
    }

    pub fn read(&self, rel: &str) -> io::Result<Option<String>> {
        match fs::read_to_string(self.path(rel)?) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Replaces `rel` through a temporary file and `rename(2)`.
    pub fn write(&self, rel: &str, contents: &str) -> io::Result<()> {
        let path = self.path(rel)?;
        let temp = temp_beside(&path, "tmp");
        let mut file = fs::File::create(&temp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o644))?;
        fs::rename(&temp, &path).inspect_err(|_| {
            let _ = fs::remove_file(&temp);
        })
    }

    /// Appends `line` and a newline in one `write(2)`.
    pub fn append(&self, rel: &str, line: &str) -> io::Result<()> {
        let mut text = line.trim_end_matches('\n').to_owned();
        text.push('\n');
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(rel)?)?;
        file.write_all(text.as_bytes())
    }

    /// The names in folder `rel`, sorted; `None` when it does not exist.
    pub fn list(&self, rel: &str) -> io::Result<Option<Vec<String>>> {
        let entries = match fs::read_dir(self.path(rel)?) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut names = entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<Vec<_>>>()?;
        names.sort();
        Ok(Some(names))
    }

    /// Creates folder `rel` holding one empty file per name, complete before it appears (built
    /// under a temporary name, then renamed), replacing a leftover of the same name; readable
    /// by nginx's workers.
    pub fn install_dir(&self, rel: &str, files: &[String]) -> io::Result<()> {
        let path = self.path(rel)?;
        let temp = temp_beside(&path, "new");
        let _ = fs::remove_dir_all(&temp);
        fs::create_dir_all(&temp)?;
        for name in files {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                let _ = fs::remove_dir_all(&temp);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} is not a file name"),
                ));
            }
            let file = temp.join(name);
            fs::File::create(&file)?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644))?;
        }
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o755))?;
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        fs::rename(&temp, &path)
    }

    /// Points the symlink `link` at `target`: a new link renamed over the old one.
    pub fn swap_link(&self, link: &str, target: &str) -> io::Result<()> {
        let path = self.path(link)?;
        let temp = temp_beside(&path, "link");
        let _ = fs::remove_file(&temp);
        symlink(target, &temp)?;
        fs::rename(&temp, &path).inspect_err(|_| {
            let _ = fs::remove_file(&temp);
        })
    }

    pub fn read_link(&self, link: &str) -> io::Result<Link> {
        let path = self.path(link)?;
        match fs::symlink_metadata(&path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Link::Missing),
            Err(err) => Ok(Link::Broken(format!("{}: {err}", path.display()))),
            Ok(meta) if meta.file_type().is_symlink() => Ok(Link::To(
                fs::read_link(&path)?.to_string_lossy().into_owned(),
            )),
            Ok(_) => Ok(Link::Broken(format!("{} is not a symlink", path.display()))),
        }
    }

    /// Removes the folders and everything in them; absent ones are not an error.
    pub fn remove_dirs(&self, rels: &[String]) -> io::Result<()> {
        for rel in rels {
            match fs::remove_dir_all(self.path(rel)?) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A fresh, empty folder under the system's temporary folder.
    pub fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mldeploy-agent-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn paths_may_not_leave_the_state_directory() {
        let dir = Dir::new(PathBuf::from("/srv/state"));
        assert_eq!(
            dir.path("routes/gen-1").unwrap(),
            Path::new("/srv/state/routes/gen-1")
        );
        for bad in ["", "/etc/passwd", "../x", "routes/../../x", "./x"] {
            assert!(dir.path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn files_folders_and_links_behave_as_the_host_dir_contract_says() {
        let root = scratch("ops");
        let dir = Dir::new(root.clone());
        assert_eq!(dir.read("state.json").unwrap(), None);
        dir.write("state.json", "{}").unwrap();
        dir.write("state.json", "{\"a\":1}").unwrap();
        assert_eq!(
            dir.read("state.json").unwrap().as_deref(),
            Some("{\"a\":1}")
        );
        dir.append("log", "one").unwrap();
        dir.append("log", "two\n").unwrap();
        assert_eq!(dir.read("log").unwrap().as_deref(), Some("one\ntwo\n"));

        assert_eq!(dir.list("routes").unwrap(), None);
        fs::create_dir(root.join("routes")).unwrap();
        dir.install_dir("routes/gen-1", &["3".into(), "1".into()])
            .unwrap();
        dir.install_dir("routes/gen-1", &["2".into()]).unwrap();
        assert_eq!(dir.list("routes/gen-1").unwrap(), Some(vec!["2".into()]));
        assert!(dir.install_dir("routes/gen-2", &["../x".into()]).is_err());
        assert_eq!(dir.list("routes").unwrap(), Some(vec!["gen-1".into()]));

        assert_eq!(dir.read_link("routes/current").unwrap(), Link::Missing);
        dir.swap_link("routes/current", "gen-1").unwrap();
        dir.swap_link("routes/current", "gen-1").unwrap();
        assert_eq!(
            dir.read_link("routes/current").unwrap(),
            Link::To("gen-1".into())
        );
        assert!(matches!(
            dir.read_link("state.json").unwrap(),
            Link::Broken(_)
        ));

        dir.remove_dirs(&["routes/gen-1".into(), "routes/gen-9".into()])
            .unwrap();
        assert_eq!(dir.list("routes").unwrap(), Some(vec!["current".into()]));
        fs::remove_dir_all(root).unwrap();
    }
}
