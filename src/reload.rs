//! Zero-downtime model reload. A new model is loaded and validated on a
//! blocking thread (ONNX checks, input/output shapes, warm-up batches, the
//! golden-digits check) while the old one keeps serving; only then is it
//! swapped in, atomically. Requests hold the engine they started on, so
//! in-flight batches finish on the old model, whose workers stop once its
//! queue is empty. A file that fails any check leaves the old model serving,
//! with an error log line and `mnister_model_reloads_total{result="failure"}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use mnister_core::engine::{Engine, EngineConfig, EngineError};
use mnister_core::metrics as m;

use crate::frontend::ServerState;

/// Why a reload left the previous model serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] EngineError),
    #[error("the model loader panicked: {0}")]
    Panicked(String),
}

/// What a successful reload swapped.
#[derive(Debug, Clone)]
pub struct Swapped {
    pub version: String,
    pub sha256: String,
    pub previous_version: Option<String>,
}

pub struct Reloader {
    state: Arc<ServerState>,
    config: EngineConfig,
    model: PathBuf,
    ort_lib: Option<PathBuf>,
    /// One reload at a time; a second trigger waits and then reloads again.
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        state: Arc<ServerState>,
        config: EngineConfig,
        model: PathBuf,
        ort_lib: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Reloader {
            state,
            config,
            model,
            ort_lib,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// Loads `path` (default: the configured model), validates it and swaps
    /// it in. `trigger` names the cause in logs.
    pub async fn reload(
        &self,
        path: Option<PathBuf>,
        trigger: &str,
    ) -> Result<Swapped, ReloadError> {
        let _one_at_a_time = self.busy.lock().await;
        let path = path.unwrap_or_else(|| self.model.clone());
        let (cfg, lib, p) = (self.config.clone(), self.ort_lib.clone(), path.clone());
        let loaded = tokio::task::spawn_blocking(move || Engine::load(&p, lib.as_deref(), cfg))
            .await
            .map_err(|e| ReloadError::Panicked(e.to_string()))
            .and_then(|r| r.map_err(ReloadError::from));
        match loaded {
            Ok(engine) => {
                let engine = Arc::new(engine);
                let old = self.state.engine.swap(Some(engine.clone()));
                m::set_model(
                    old.as_deref().map(Engine::model_labels),
                    engine.model_labels(),
                );
                counter!(m::RELOADS, "result" => "success").increment(1);
                tracing::info!(
                    trigger,
                    model = %path.display(),
                    version = %engine.version,
                    sha256 = %engine.model.sha256,
                    previous = old.as_deref().map(|o| o.version.to_string()).unwrap_or_default(),
                    "model reloaded"
                );
                Ok(Swapped {
                    version: engine.version.to_string(),
                    sha256: engine.model.sha256.clone(),
                    previous_version: old.map(|o| o.version.to_string()),
                })
            }
            Err(reason) => {
                counter!(m::RELOADS, "result" => "failure").increment(1);
                let current = self
                    .state
                    .engine
                    .load_full()
                    .map(|e| e.version.to_string())
                    .unwrap_or_default();
                tracing::error!(
                    trigger,
                    model = %path.display(),
                    %reason,
                    still_serving = %current,
                    "model reload failed; the previous model keeps serving"
                );
                Err(reason)
            }
        }
    }

    /// Reloads on every SIGHUP.
    pub fn on_sighup(self: &Arc<Self>) {
        #[cfg(unix)]
        {
            let this = self.clone();
            tokio::spawn(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    tracing::warn!("cannot listen for SIGHUP; reload by signal is off");
                    return;
                };
                while hup.recv().await.is_some() {
                    let _ = this.reload(None, "SIGHUP").await;
                }
            });
        }
    }

    /// Reloads when the model file's contents change. Polls size and mtime,
    /// and compares the checksum before reloading, so touching the file or
    /// rewriting the same bytes does nothing.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let stamp = |p: &PathBuf| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.len(), m.modified().ok()))
            };
            let mut last = stamp(&this.model);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamp(&this.model);
                if now == last || now.is_none() {
                    continue;
                }
                // Wait one more period for a writer to finish, then compare contents.
                tokio::time::sleep(every).await;
                last = stamp(&this.model);
                let Ok(bytes) = tokio::fs::read(&this.model).await else {
                    continue;
                };
                let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
                let current = this
                    .state
                    .engine
                    .load_full()
                    .map(|e| e.model.sha256.clone());
                if current.as_deref() != Some(sha.as_str()) {
                    let _ = this.reload(None, "file change").await;
                }
            }
        });
    }
}
