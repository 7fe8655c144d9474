//! Request ids: one id follows a request across services and into the trainer.
//!
//! The id travels in the gRPC metadata key [`HEADER`] (`x-request-id`). Every server
//! ([`crate::rpc::RpcLayer`]) takes it from the incoming call, or makes one when the caller sent
//! none or an unusable one, puts it on the call's `rpc` span and answers it in the response
//! headers. While a handler runs, [`current`] returns it, so outgoing calls carry it
//! ([`attach`], or [`propagate`] as a client interceptor). A training job carries it to its
//! trainer in the environment variable [`ENV_VAR`]; the trainer reads it with [`from_env`].
//!
//! The id lives in a task-local [`Scope`], which also names the call's RPC when the call has no
//! `tracing` span of its own (see [`crate::rpc`]): the log formatters then write that RPC as the
//! call's `rpc{…}` span ([`with_scope`]).

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::metadata::MetadataValue;

/// The gRPC metadata key (an HTTP/2 header) carrying the request id.
pub const HEADER: &str = "x-request-id";

/// The trainer environment variable carrying the id of the `Train` call that queued the job.
pub const ENV_VAR: &str = "AUTOML_REQUEST_ID";

/// The longest id accepted from a caller; longer ones are replaced by a fresh id.
pub const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: Scope;
}

/// What the task-local holds while a call or a job runs.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The request id.
    pub id: String,
    /// The RPC being served, when its `rpc` span is kept here rather than in `tracing`: the log
    /// formatters write it as that span. `None` for a job's work, and for a call that has a
    /// real span.
    pub rpc: Option<&'static RpcName>,
}

/// An RPC's service and method, as its span and its metrics name them.
#[derive(Debug)]
pub struct RpcName {
    /// `pkg.Service`.
    pub service: String,
    /// `Method`.
    pub method: String,
}

/// Whether `id` is usable as is: 1 to [`MAX_LEN`] characters of letters, digits, `-`, `_`,
/// `.` and `:` (safe in headers, logs and environment variables).
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A fresh id: 16 hex digits, unique within the process and unlikely to repeat across them.
///
/// A counter per thread, mixed with a seed per process (pid, start time, and the std hasher's
/// random keys) and the thread's own tag through SplitMix64, a bijection: ids never repeat
/// within a thread, and threads and processes draw from different streams. No lock, no
/// allocation but the id's own.
pub fn generate() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        static TAG: u64 = THREADS.fetch_add(1, Ordering::Relaxed);
    }
    let seed = *SEED.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(now.as_nanos());
        }
        hasher.finish()
    });
    let count = NEXT.with(|next| {
        let value = next.get();
        next.set(value.wrapping_add(1));
        value
    });
    let tag = TAG.with(|tag| *tag);
    // Thread tag in the top 16 bits, its counter below: distinct inputs, distinct outputs.
    let value = splitmix64(seed ^ ((tag << 48) | (count & 0xFFFF_FFFF_FFFF)));
    let mut id = String::with_capacity(16);
    for shift in (0..16).rev() {
        let nibble = ((value >> (shift * 4)) & 0xF) as u8;
        id.push(char::from(if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        }));
    }
    id
}

/// SplitMix64's finalizer: a bijection on u64 that mixes every input bit into every output bit.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The id of the request being handled by the current task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|scope| scope.id.clone()).ok()
}

/// `f` of the current task's [`Scope`], without copying it (for log formatters); `None`
/// outside a scope.
pub fn with_scope<T>(f: impl FnOnce(&Scope) -> T) -> Option<T> {
    CURRENT.try_with(f).ok()
}

/// Runs `future` with `id` as the [`current`] request id.
pub async fn scope<F: Future>(id: String, future: F) -> F::Output {
    CURRENT.scope(Scope { id, rpc: None }, future).await
}

/// A future running in a [`Scope`].
pub type Scoped<F> = tokio::task::futures::TaskLocalFuture<Scope, F>;

/// Runs `future` in `scope`, as a nameable future type, for futures stored in structs.
pub fn scoped<F: Future>(scope: Scope, future: F) -> Scoped<F> {
    CURRENT.scope(scope, future)
}

/// Puts `id` on an outgoing request (replacing any id already there); ignores invalid ids.
pub fn set<T>(request: &mut tonic::Request<T>, id: &str) {
    if !is_valid(id) {
        return;
    }
    if let Ok(mut value) = MetadataValue::try_from(id) {
        // Never indexed by HPACK: each id is used once (see crate::rpc).
        value.set_sensitive(true);
        request.metadata_mut().insert(HEADER, value);
    }
}

/// Puts the [`current`] id, if any, and the current trace context (when spans are exported)
/// on an outgoing request.
pub fn attach<T>(request: &mut tonic::Request<T>) {
    if let Some(id) = current() {
        set(request, &id);
    }
    crate::otlp::inject(request);
}

/// The id on an incoming request, if it carries a valid one.
pub fn from_request<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_valid(id))
        .map(str::to_string)
}

/// A client interceptor (`Client::with_interceptor(channel, request_id::propagate)`) that
/// attaches the [`current`] id to every call.
pub fn propagate(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    attach(&mut request);
    Ok(request)
}

/// A client interceptor attaching one fixed id (when set) to every call: for programs outside
/// any server call, such as the trainer with the id of the `Train` call that queued it.
#[derive(Debug, Clone, Default)]
pub struct Fixed(pub Option<String>);

impl tonic::service::Interceptor for Fixed {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(id) = &self.0 {
            set(&mut request, id);
        }
        crate::otlp::inject(&mut request);
        Ok(request)
    }
}

/// The trainer's request id from its environment map, if set and valid.
pub fn from_env(env: &std::collections::HashMap<String, String>) -> Option<String> {
    env.get(ENV_VAR).filter(|id| is_valid(id)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = generate();
        let b = generate();
        assert!(is_valid(&a) && is_valid(&b));
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        let mut seen: std::collections::HashSet<String> = (0..10_000).map(|_| generate()).collect();
        let other: Vec<String> = std::thread::spawn(|| (0..10_000).map(|_| generate()).collect())
            .join()
            .expect("thread");
        seen.extend(other);
        assert_eq!(
            seen.len(),
            20_000,
            "no id repeats, within or across threads"
        );
    }

    #[test]
    fn unusable_ids_are_refused() {
        assert!(!is_valid(""));
        assert!(!is_valid("has space"));
        assert!(!is_valid("new\nline"));
        assert!(!is_valid(&"x".repeat(MAX_LEN + 1)));
        assert!(is_valid("req-1_a.b:c"));
    }

    #[tokio::test]
    async fn current_id_is_attached_inside_a_scope_only() {
        let mut outside = tonic::Request::new(());
        attach(&mut outside);
        assert!(outside.metadata().get(HEADER).is_none());
        let id = scope("abc-1".to_string(), async {
            let request = propagate(tonic::Request::new(())).expect("interceptor");
            from_request(&request)
        })
        .await;
        assert_eq!(id.as_deref(), Some("abc-1"));
    }
}
