//! Compiled components on disk, keyed by the component's SHA-256 and the engine's
//! compatibility hash, so a restart (or the same bytes added under another name) does not
//! compile again, and a different wasmtime or engine configuration never loads a stale file.
//! Opening the cache deletes every other file in it: code an earlier engine compiled (after
//! an upgrade) and partial writes of a killed process would otherwise stay forever.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;

use wasmtime::component::Component;

use super::{PluginError, create_dir, write_durably};

#[derive(Debug)]
pub struct ComponentCache {
    engine: wasmtime::Engine,
    dir: PathBuf,
    /// `-<engine tag>.cwasm`: what every file this engine loads is named with.
    file_suffix: String,
}

impl ComponentCache {
    pub fn open(engine: &wasmtime::Engine, dir: PathBuf) -> Result<Self, PluginError> {
        create_dir(&dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache = Self {
            engine: engine.clone(),
            dir,
            file_suffix: format!("-{:016x}.cwasm", hasher.finish()),
        };
        cache.remove_stale();
        Ok(cache)
    }

    /// Deletes what this engine never loads: only this module writes the directory, and
    /// before any plugin is compiled, so nothing removed here is in use.
    fn remove_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let stale = entry
                .file_name()
                .to_str()
                .is_none_or(|name| !name.ends_with(&self.file_suffix));
            if stale && let Err(error) = std::fs::remove_file(entry.path()) {
                tracing::warn!(
                    path = %entry.path().display(),
                    %error,
                    "cannot delete a stale compiled plugin"
                );
            }
        }
    }

    /// Removes the compiled code of a component that is no longer stored.
    pub fn forget(&self, digest: &str) -> Result<(), PluginError> {
        let path = self.path(digest);
        std::fs::remove_file(&path)
            .or_else(super::ignore_missing)
            .map_err(|source| PluginError::Io { path, source })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}{}", self.file_suffix))
    }

    /// The compiled component for `bytes`: loaded from the cache, or validated, compiled and
    /// cached. A cache file that does not load is replaced.
    pub fn component(
        &self,
        name: &str,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Component, PluginError> {
        let path = self.path(digest);
        if path.exists() {
            match deserialize(&self.engine, &path) {
                Ok(component) => return Ok(component),
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    %error,
                    "compiled plugin cache entry does not load; compiling again"
                ),
            }
        }
        let component =
            Component::new(&self.engine, bytes).map_err(|e| PluginError::InvalidComponent {
                name: name.to_owned(),
                reason: format!("{e:#}"),
            })?;
        match component.serialize() {
            Ok(compiled) => {
                if let Err(error) = write_durably(&path, &compiled) {
                    tracing::warn!(%error, "cannot cache the compiled plugin");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot serialize the compiled plugin"),
        }
        Ok(component)
    }
}

/// Loads native code that this process's engine compiled earlier.
#[allow(unsafe_code)]
fn deserialize(engine: &wasmtime::Engine, path: &std::path::Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires the file to be a `Component::serialize` output of a compatible
    // engine. Only this module writes the cache directory (under the data directory, which
    // the appliance owns), always whole files via rename, named by the engine's compatibility
    // hash; wasmtime additionally checks the version and configuration recorded in the file.
    unsafe { Component::deserialize_file(engine, path) }
}
