//! A fake runtime for unit tests of the operation engine: an in-memory host directory with
//! injectable failures, and colors that are "running" when told so. Nothing here starts a
//! process or opens a socket.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    rc::Rc,
    time::Duration,
};

use anyhow::{bail, Result};

use super::{HostDir, HostLock, Link, Part, Runtime};
use crate::{domain::Color, nginx::NginxParams};

/// One node of the in-memory host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File(String),
    Dir,
    Link(String),
}

/// The in-memory host state shared by a [`Fake`] runtime and the test that inspects it.
#[derive(Debug, Default)]
pub struct FakeHost {
    pub nodes: RefCell<BTreeMap<String, Node>>,
    /// `(operation, path)` pairs that fail, e.g. `("write", "state.json")`,
    /// `("swap_link", "routes/current")`; an operation is `write`, `append`, `install_dir`,
    /// `swap_link` or `remove_dirs`.
    pub failing: RefCell<BTreeSet<(String, String)>>,
    pub running: RefCell<BTreeSet<String>>,
}

impl FakeHost {
    /// Makes `operation` on `path` fail from now on.
    pub fn fail(&self, operation: &str, path: &str) {
        self.failing
            .borrow_mut()
            .insert((operation.to_owned(), path.to_owned()));
    }

    /// Makes it succeed again.
    pub fn heal(&self, operation: &str, path: &str) {
        self.failing
            .borrow_mut()
            .remove(&(operation.to_owned(), path.to_owned()));
    }

    fn check(&self, operation: &str, path: &str) -> Result<()> {
        if self
            .failing
            .borrow()
            .contains(&(operation.to_owned(), path.to_owned()))
        {
            bail!("{operation} {path}: injected failure (no space left on device)");
        }
        Ok(())
    }

    /// The file's contents, if any.
    pub fn file(&self, rel: &str) -> Option<String> {
        match self.nodes.borrow().get(rel) {
            Some(Node::File(text)) => Some(text.clone()),
            _ => None,
        }
    }
}

/// A runtime over a [`FakeHost`].
pub struct Fake(pub Rc<FakeHost>);

impl Runtime for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn url(&self, part: Part) -> String {
        format!("fake://{part}")
    }

    fn grpc_url(&self, part: Part) -> String {
        format!("fake-grpc://{part}")
    }

    fn nginx_params(&self) -> NginxParams {
        NginxParams::container_default()
    }

    fn host(&self) -> &dyn HostDir {
        &*self.0
    }

    fn start_balancer(&self, _: &str) -> Result<()> {
        self.0.running.borrow_mut().insert("balancer".into());
        Ok(())
    }

    fn start_color(&self, color: Color, _: &str) -> Result<()> {
        self.0.running.borrow_mut().insert(color.to_string());
        Ok(())
    }

    fn stop_color(&self, color: Color) -> Result<()> {
        self.0.running.borrow_mut().remove(color.as_str());
        Ok(())
    }

    fn is_running(&self, part: Part) -> Result<bool> {
        Ok(self.0.running.borrow().contains(&part.to_string()))
    }

    fn logs(&self, _: Part, _: usize) -> Result<String> {
        Ok(String::new())
    }

    fn down(&self) -> Result<()> {
        self.0.nodes.borrow_mut().clear();
        self.0.running.borrow_mut().clear();
        Ok(())
    }

    fn apply_config(&self, _: &str) -> Result<()> {
        Ok(())
    }

    fn current_config(&self) -> Result<Option<String>> {
        Ok(None)
    }
}

impl HostDir for FakeHost {
    fn read(&self, rel: &str) -> Result<Option<String>> {
        Ok(self.file(rel))
    }

    fn write(&self, rel: &str, contents: &str) -> Result<()> {
        self.check("write", rel)?;
        self.nodes
            .borrow_mut()
            .insert(rel.to_owned(), Node::File(contents.to_owned()));
        Ok(())
    }

    fn append(&self, rel: &str, line: &str) -> Result<()> {
        self.check("append", rel)?;
        let mut nodes = self.nodes.borrow_mut();
        let text = match nodes.get(rel) {
            Some(Node::File(text)) => text.clone(),
            _ => String::new(),
        };
        nodes.insert(rel.to_owned(), Node::File(format!("{text}{line}\n")));
        Ok(())
    }

    fn list(&self, rel: &str) -> Result<Option<Vec<String>>> {
        let nodes = self.nodes.borrow();
        if nodes.get(rel) != Some(&Node::Dir) {
            return Ok(None);
        }
        let prefix = format!("{rel}/");
        Ok(Some(
            nodes
                .keys()
                .filter_map(|path| path.strip_prefix(&prefix))
                .filter(|name| !name.contains('/'))
                .map(str::to_owned)
                .collect(),
        ))
    }

    fn install_dir(&self, rel: &str, empty_files: &[String]) -> Result<()> {
        self.check("install_dir", rel)?;
        self.remove_dirs(&[rel.to_owned()])?;
        let mut nodes = self.nodes.borrow_mut();
        if let Some((parent, _)) = rel.rsplit_once('/') {
            nodes.insert(parent.to_owned(), Node::Dir);
        }
        nodes.insert(rel.to_owned(), Node::Dir);
        for file in empty_files {
            nodes.insert(format!("{rel}/{file}"), Node::File(String::new()));
        }
        Ok(())
    }

    fn swap_link(&self, link: &str, target: &str) -> Result<()> {
        self.check("swap_link", link)?;
        self.nodes
            .borrow_mut()
            .insert(link.to_owned(), Node::Link(target.to_owned()));
        Ok(())
    }

    fn read_link(&self, link: &str) -> Result<Link> {
        Ok(match self.nodes.borrow().get(link) {
            None => Link::Missing,
            Some(Node::Link(target)) => Link::To(target.clone()),
            Some(_) => Link::Broken(format!("{link} is not a symlink")),
        })
    }

    fn remove_dirs(&self, rels: &[String]) -> Result<()> {
        for rel in rels {
            self.check("remove_dirs", rel)?;
            let prefix = format!("{rel}/");
            self.nodes
                .borrow_mut()
                .retain(|path, _| path != rel && !path.starts_with(&prefix));
        }
        Ok(())
    }

    fn lock(&self, _: Duration, _: &str) -> Result<HostLock> {
        Ok(Box::new(()))
    }
}
