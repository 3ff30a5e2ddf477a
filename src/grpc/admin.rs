//! `mnister.v1.Admin`: operator RPCs, served only with --enable-admin-rpc.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::v1 as pb;
use crate::proto::v1::admin_server::Admin;
use crate::reload::Reloader;

pub struct AdminService {
    reloader: Arc<Reloader>,
}

impl AdminService {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        AdminService { reloader }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload_model(
        &self,
        r: Request<pb::ReloadModelRequest>,
    ) -> Result<Response<pb::ReloadModelResponse>, Status> {
        let path = Some(r.into_inner().path)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        match self.reloader.reload(path, "admin RPC").await {
            Ok(s) => Ok(Response::new(pb::ReloadModelResponse {
                version: s.version,
                sha256: s.sha256,
                previous_version: s.previous_version.unwrap_or_default(),
            })),
            Err(reason) => Err(Status::failed_precondition(format!(
                "the new model was not loaded and the previous one keeps serving: {reason}"
            ))),
        }
    }
}
