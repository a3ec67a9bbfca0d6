//! PUT: replace an object (or its status, or a namespace's finalizers). A
//! resourceVersion in the body makes it a compare-and-swap (409 when stale); without one
//! the update is unconditional, as Kubernetes allows for built-in types.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;

use super::{Ctx, Part, object_response, update_loop};
use crate::apiserver::request::{content_type, decode, read_body};
use crate::apiserver::status::ApiResult;

pub async fn put(ctx: Ctx, name: &str, part: Option<Part>, body: Body) -> ApiResult<Response> {
    let bytes = read_body(body, ctx.api.max_body).await?;
    let desired = decode(&bytes, &content_type(&ctx.headers))?;
    let part = part.unwrap_or(Part::Main);
    let (obj, _) = update_loop(&ctx, name, part, |_| Ok(desired.clone())).await?;
    object_response(&ctx, StatusCode::OK, &obj).await
}
