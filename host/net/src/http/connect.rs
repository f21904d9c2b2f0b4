//! CONNECT in regular and upstream mode: the http-connect hook, then 200 and a switch to
//! the tunnel stage, where `next_layer` looks at what the client sends. The client's
//! layer writes the answer and hands its stream on.

use std::sync::Arc;
use std::time::Instant;

use flowgate_flow::Request;

use super::Killed;
use super::exchange::{Exchange, Reply, rerouted};
use crate::conn::ConnCtx;
use crate::error::Error;
use crate::layer::Stage;
use crate::upstream::Target;

/// What becomes of a CONNECT.
pub(crate) enum Answer {
    /// 200: the stream goes on as a tunnel at this stage.
    Tunnel(Stage),
    /// A plugin answered it.
    Reply(Reply),
}

/// Runs a CONNECT request (`host` and `port` filled in) through the http-connect hooks.
pub(crate) async fn connect(ctx: &Arc<ConnCtx>, request: Request) -> Result<Answer, Killed> {
    let original = (request.host.clone(), request.port);
    let mut ex = Exchange::new(ctx, request, Instant::now());
    let action = ex.session.http_connect(&mut ex.request).await;
    if let Some(reply) = ex.act(action).await? {
        return Ok(Answer::Reply(reply));
    }
    // A plugin that moved the tunnel needs the grant for where it now goes.
    // It connects to the address that was checked.
    let moved = Target::new(ex.request.scheme, ex.request.host.clone(), ex.request.port);
    let mut pinned = None;
    if (moved.host.as_str(), moved.port) != (original.0.as_str(), original.1) {
        match rerouted(ctx, ex.session.reroute(), &moved).await {
            Ok(addr) => pinned = addr,
            Err(message) => return Ok(Answer::Reply(ex.fail(Error::Plugin(message)).await)),
        }
    }
    Ok(Answer::Tunnel(Stage::Tunnel { host: ex.request.host.clone(), port: ex.request.port, pinned }))
}
