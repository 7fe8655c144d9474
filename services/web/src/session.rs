//! Sessions: the token a user signs in with lives only in an HttpOnly, SameSite=Strict cookie
//! (Secure under TLS); it never appears in a URL, a page or a log. Without authentication
//! every visitor gets an anonymous session cookie, so forms are protected the same way.
//!
//! Forms and scripted requests that change state carry a token derived from the session
//! cookie (`sha256`), which a page of another site cannot read; the request's `Origin`, when
//! sent, must be this host. Both are checked by [`Session::check_csrf`].

use std::sync::Arc;

use automl_common::auth::Credentials;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::{WebError, WebResult};
use crate::pages::layout;

/// The session cookie.
pub const COOKIE: &str = "automl_session";
/// The form field (or `x-csrf-token` header) that carries the cross-site token.
pub const CSRF_FIELD: &str = "csrf";
const ANONYMOUS: &str = "anon.";

/// The caller of one request.
#[derive(Clone)]
pub struct Session {
    /// What the services receive.
    pub credentials: Credentials,
    /// The token forms must send back.
    pub csrf: String,
    /// Signed in with a token (authentication on).
    pub signed_in: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("signed_in", &self.signed_in)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn from_cookie(value: &str) -> Result<Self, WebError> {
        let signed_in = !value.starts_with(ANONYMOUS);
        let credentials = if signed_in {
            Credentials::bearer(value).map_err(|_| WebError::Forbidden("bad session".into()))?
        } else {
            Credentials::default()
        };
        Ok(Self {
            credentials,
            csrf: csrf_token(value),
            signed_in,
        })
    }

    /// Refuses a state-changing request whose cross-site token (`given`, from the form or the
    /// `x-csrf-token` header) is not this session's, or that comes from another origin.
    pub fn check_csrf(&self, headers: &HeaderMap, given: Option<&str>) -> WebResult<()> {
        check_origin(headers)?;
        let given = given
            .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) {
            return Err(WebError::Forbidden(
                "this form has expired or comes from another site; reload the page".into(),
            ));
        }
        Ok(())
    }
}

fn csrf_token(cookie: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"automl-console-csrf\0")
        .chain_update(cookie.as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

/// A request with an `Origin` header must come from this host.
fn check_origin(headers: &HeaderMap) -> WebResult<()> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    if origin_host.is_empty() || origin_host != host {
        return Err(WebError::Forbidden(format!(
            "cross-site request from {origin} refused"
        )));
    }
    Ok(())
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|value| !value.is_empty())
}

fn set_cookie(value: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| clear_cookie())
}

/// A `Set-Cookie` that ends the session.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("automl_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Puts the caller's [`Session`] into the request. With authentication on, a request without a
/// session is sent to the sign-in page (pages) or refused (event streams, scripted calls);
/// without it, a new visitor gets an anonymous session.
pub async fn require_session(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let existing = cookie_value(request.headers())
        .filter(|value| state.auth_enabled != value.starts_with(ANONYMOUS));
    let (value, fresh) = match existing {
        Some(value) => (value, false),
        None if state.auth_enabled => {
            let wants_page = request.method() == axum::http::Method::GET
                && request
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|accept| accept.contains("text/html"));
            if wants_page {
                let next = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                let target = format!(
                    "/signin?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("next", &next)
                        .finish()
                );
                return Redirect::to(&target).into_response();
            }
            return (axum::http::StatusCode::UNAUTHORIZED, "sign in first").into_response();
        }
        None => (
            format!("{ANONYMOUS}{}", uuid::Uuid::new_v4().simple()),
            true,
        ),
    };
    let session = match Session::from_cookie(&value) {
        Ok(session) => session,
        Err(err) => return err.into_response(),
    };
    request.extensions_mut().insert(session);
    let mut response = next.run(request).await;
    if fresh {
        response
            .headers_mut()
            .append(header::SET_COOKIE, set_cookie(&value, state.secure_cookies));
    }
    response
}

/// `?next=` of the sign-in page.
#[derive(Debug, Deserialize, Default)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only a path of this site may follow a sign-in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path.to_string()
        }
        _ => "/".into(),
    }
}

fn sign_in_form(next: &str, error: Option<&str>) -> maud::Markup {
    layout::bare(
        "Sign in",
        html! {
            section.signin {
                h1 { "Sign in to automl" }
                p { "Paste an API token (" code { "automl token create --tenant <team>" } ")." }
                @if let Some(error) = error { p.error #signin-error { (error) } }
                form method="post" action="/signin" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="off" required;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// GET /signin
pub async fn sign_in_page(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(query): axum::extract::Query<NextQuery>,
) -> Response {
    if !state.auth_enabled {
        return Redirect::to("/").into_response();
    }
    sign_in_form(&safe_next(query.next.as_deref()), None).into_response()
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct SignInForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// POST /signin: the token is checked against metadata-store, then kept in the cookie.
pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SignInForm>,
) -> WebResult<Response> {
    check_origin(&headers)?;
    let next = safe_next(form.next.as_deref());
    let token = form.token.trim();
    let refused = |message: &str| {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            sign_in_form(&next, Some(message)),
        )
            .into_response()
    };
    if !state.auth_enabled {
        return Ok(Redirect::to(&next).into_response());
    }
    if token.is_empty()
        || token.starts_with(ANONYMOUS)
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b))
    {
        return Ok(refused("that is not a token"));
    }
    let credentials = Credentials::bearer(token).map_err(WebError::Rpc)?;
    let probe = state
        .backends
        .metadata(&credentials)
        .list_runs(automl_proto::metadata_store::ListRunsRequest {
            limit: 1,
            without_epochs: true,
            ..Default::default()
        })
        .await;
    match probe {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            tracing::info!("console sign-in refused");
            return Ok(refused(
                "this token is not valid (unknown, revoked or expired)",
            ));
        }
        Err(status) => return Err(WebError::Rpc(status)),
    }
    tracing::info!("console sign-in");
    Ok((
        [(header::SET_COOKIE, set_cookie(token, state.secure_cookies))],
        Redirect::to(&next),
    )
        .into_response())
}

/// The sign-out form.
#[derive(Deserialize)]
pub struct CsrfForm {
    /// The cross-site token.
    pub csrf: Option<String>,
}

/// POST /signout
pub async fn sign_out(
    axum::Extension(session): axum::Extension<Session>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> WebResult<Response> {
    session.check_csrf(&headers, form.csrf.as_deref())?;
    Ok((
        [(header::SET_COOKIE, clear_cookie())],
        Redirect::to("/signin"),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_follow_a_sign_in() {
        assert_eq!(safe_next(Some("/runs/3")), "/runs/3");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_cross_site_token_depends_on_the_session() {
        let a = Session::from_cookie("anon.1").expect("session");
        let b = Session::from_cookie("anon.2").expect("session");
        assert_ne!(a.csrf, b.csrf);
        let mut headers = HeaderMap::new();
        assert!(a.check_csrf(&headers, Some(&a.csrf)).is_ok());
        assert!(a.check_csrf(&headers, Some(&b.csrf)).is_err());
        assert!(a.check_csrf(&headers, None).is_err());
        headers.insert(header::HOST, HeaderValue::from_static("console:8080"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil:8080"));
        assert!(a.check_csrf(&headers, Some(&a.csrf)).is_err());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://console:8080"),
        );
        assert!(a.check_csrf(&headers, Some(&a.csrf)).is_ok());
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let cookie = set_cookie("t0k", true);
        let text = cookie.to_str().expect("ascii");
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(text.contains("Secure"));
        assert!(
            !set_cookie("t0k", false)
                .to_str()
                .expect("ascii")
                .contains("Secure")
        );
    }
}
