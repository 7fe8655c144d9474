//! A simulated Kubernetes API server: an HTTP server speaking the Kubernetes JSON API for the
//! calls training-service makes (create/get/list/watch/delete Jobs, list/watch Pods, pod logs,
//! followed or not, and create and patch Secrets).
//! The test plays the Job controller and the kubelet through its methods: a created Job gets a
//! Pending pod; the test moves pods through their phases and finishes Jobs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Job,
    Pod,
}

#[derive(Debug, Clone)]
struct Event {
    version: u64,
    kind: Kind,
    kind_of_change: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Objects {
    version: u64,
    jobs: BTreeMap<String, Value>,
    pods: BTreeMap<String, Value>,
    logs: BTreeMap<String, String>,
    secrets: BTreeMap<String, Value>,
    history: Vec<Event>,
    requests: Vec<String>,
    /// Job deletes still to refuse (an API server that is failing).
    refuse_deletes: usize,
}

#[derive(Clone)]
struct Shared {
    objects: Arc<Mutex<Objects>>,
    events: broadcast::Sender<Event>,
}

/// The running simulated API server.
pub struct KubeApi {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Shared,
    shutdown: CancellationToken,
}

fn labels_match(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let (key, value) = term.split_once('=').unwrap_or((term, ""));
        object["metadata"]["labels"][key].as_str() == Some(value)
    })
}

impl Objects {
    fn record(
        &mut self,
        events: &broadcast::Sender<Event>,
        kind: Kind,
        kind_of_change: &'static str,
        mut object: Value,
    ) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let event = Event {
            version: self.version,
            kind,
            kind_of_change,
            object: object.clone(),
        };
        self.history.push(event.clone());
        let _ = events.send(event);
        object
    }

    fn store(&mut self, events: &broadcast::Sender<Event>, kind: Kind, object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let map = match kind {
            Kind::Job => &mut self.jobs,
            Kind::Pod => &mut self.pods,
        };
        let change = if map.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let object = self.record(events, kind, change, object);
        match kind {
            Kind::Job => self.jobs.insert(name, object),
            Kind::Pod => self.pods.insert(name, object),
        };
    }

    fn remove(
        &mut self,
        events: &broadcast::Sender<Event>,
        kind: Kind,
        name: &str,
    ) -> Option<Value> {
        let object = match kind {
            Kind::Job => self.jobs.remove(name),
            Kind::Pod => self.pods.remove(name),
        }?;
        Some(self.record(events, kind, "DELETED", object))
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn list_or_watch(shared: &Shared, kind: Kind, query: &BTreeMap<String, String>) -> Response {
    let selector = query.get("labelSelector");
    let mut objects = shared.objects.lock().expect("lock");
    if query.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let backlog: Vec<Event> = objects
            .history
            .iter()
            .filter(|e| e.version > from && e.kind == kind)
            .cloned()
            .collect();
        // Subscribed under the lock: nothing falls between the backlog and the live events.
        let live = BroadcastStream::new(shared.events.subscribe())
            .filter_map(move |e| async move { e.ok().filter(|e| e.kind == kind) });
        drop(objects);
        let selector = selector.cloned();
        let stream = futures::stream::iter(backlog)
            .chain(live)
            .filter(move |e| {
                let keep = labels_match(&e.object, selector.as_ref());
                async move { keep }
            })
            .map(|e| {
                let mut line =
                    serde_json::to_vec(&json!({"type": e.kind_of_change, "object": e.object}))
                        .expect("json");
                line.push(b'\n');
                Ok::<_, std::io::Error>(Bytes::from(line))
            });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .expect("response");
    }
    let (api_version, list_kind, map) = match kind {
        Kind::Job => ("batch/v1", "JobList", &objects.jobs),
        Kind::Pod => ("v1", "PodList", &objects.pods),
    };
    let items: Vec<Value> = map
        .values()
        .filter(|o| labels_match(o, selector))
        .cloned()
        .collect();
    let version = objects.version.to_string();
    objects.requests.push(format!("LIST {list_kind}"));
    axum::Json(json!({
        "apiVersion": api_version,
        "kind": list_kind,
        "metadata": {"resourceVersion": version},
        "items": items,
    }))
    .into_response()
}

async fn jobs_get(
    State(shared): State<Shared>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    list_or_watch(&shared, Kind::Job, &query)
}

async fn pods_get(
    State(shared): State<Shared>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    list_or_watch(&shared, Kind::Pod, &query)
}

async fn jobs_create(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    axum::Json(mut job): axum::Json<Value>,
) -> Response {
    let mut objects = shared.objects.lock().expect("lock");
    let name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    objects.requests.push(format!("CREATE Job {name}"));
    if objects.jobs.contains_key(&name) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("jobs.batch \"{name}\" already exists"),
        );
    }
    job["metadata"]["namespace"] = json!(namespace);
    job["metadata"]["uid"] = json!(format!("uid-{name}"));
    job["metadata"]["creationTimestamp"] = json!("2026-11-22T00:00:00Z");
    job["status"] = json!({"active": 1});
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    labels["batch.kubernetes.io/job-name"] = json!(name);
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{name}-x7k2p"),
            "namespace": namespace,
            "labels": labels,
            "creationTimestamp": "2026-11-22T00:00:01Z",
        },
        "spec": job["spec"]["template"]["spec"].clone(),
        "status": {"phase": "Pending"},
    });
    objects.store(&shared.events, Kind::Job, job);
    let created = objects.jobs.get(&name).cloned().unwrap_or_default();
    objects.store(&shared.events, Kind::Pod, pod);
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

async fn job_get(
    State(shared): State<Shared>,
    Path((_namespace, name)): Path<(String, String)>,
) -> Response {
    let objects = shared.objects.lock().expect("lock");
    match objects.jobs.get(&name) {
        Some(job) => axum::Json(job.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("jobs.batch \"{name}\" not found"),
        ),
    }
}

async fn job_delete(
    State(shared): State<Shared>,
    Path((_namespace, name)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let mut objects = shared.objects.lock().expect("lock");
    let policy = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["propagationPolicy"].as_str().map(str::to_string))
        .or_else(|| query.get("propagationPolicy").cloned())
        .unwrap_or_default();
    if objects.refuse_deletes > 0 {
        objects.refuse_deletes -= 1;
        objects.requests.push(format!("DELETE Job {name} refused"));
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcdserver: request timed out",
        );
    }
    objects.requests.push(format!("DELETE Job {name} {policy}"));
    let Some(job) = objects.remove(&shared.events, Kind::Job, &name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("jobs.batch \"{name}\" not found"),
        );
    };
    // The garbage collector: what the Job owned goes with it.
    let uid = job["metadata"]["uid"].clone();
    objects.secrets.retain(|_, secret| {
        !secret["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|owners| owners.iter().any(|o| o["uid"] == uid))
    });
    if policy == "Background" || policy == "Foreground" {
        let pods: Vec<String> = objects
            .pods
            .iter()
            .filter(|(_, pod)| {
                pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] == json!(name)
            })
            .map(|(pod, _)| pod.clone())
            .collect();
        for pod in pods {
            objects.remove(&shared.events, Kind::Pod, &pod);
        }
    }
    axum::Json(job).into_response()
}

/// A pod's log; with `follow=true` the response stays open and carries what the trainer
/// writes next, until its pod has terminated (or is gone).
async fn pod_log(
    State(shared): State<Shared>,
    Path((_namespace, name)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let objects = shared.objects.lock().expect("lock");
    if !objects.pods.contains_key(&name) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        );
    }
    let log = objects.logs.get(&name).cloned().unwrap_or_default();
    if query.get("follow").map(String::as_str) != Some("true") {
        return log.into_response();
    }
    drop(objects);
    let state = (shared, name, 0usize);
    let stream = futures::stream::unfold(state, |(shared, name, sent)| async move {
        loop {
            let (log, done) = {
                let objects = shared.objects.lock().expect("lock");
                let log = objects.logs.get(&name).cloned().unwrap_or_default();
                let done = objects.pods.get(&name).is_none_or(|pod| {
                    matches!(
                        pod["status"]["phase"].as_str(),
                        Some("Succeeded" | "Failed")
                    )
                });
                (log, done)
            };
            if log.len() > sent {
                let chunk = Bytes::from(log[sent..].to_string());
                return Some((Ok::<_, std::io::Error>(chunk), (shared, name, log.len())));
            }
            if done {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(stream))
        .expect("response")
}

async fn secrets_create(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    axum::Json(mut secret): axum::Json<Value>,
) -> Response {
    let mut objects = shared.objects.lock().expect("lock");
    let name = secret["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    objects.requests.push(format!("CREATE Secret {name}"));
    if objects.secrets.contains_key(&name) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("secrets \"{name}\" already exists"),
        );
    }
    secret["metadata"]["namespace"] = json!(namespace);
    secret["metadata"]["uid"] = json!(format!("uid-{name}"));
    objects.secrets.insert(name, secret.clone());
    (StatusCode::CREATED, axum::Json(secret)).into_response()
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes, anything else
/// replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            target.as_object_mut().map(|t| t.remove(key));
        } else {
            merge_patch(&mut target[key.as_str()], value);
        }
    }
}

async fn secret_patch(
    State(shared): State<Shared>,
    Path((_namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut objects = shared.objects.lock().expect("lock");
    objects.requests.push(format!("PATCH Secret {name}"));
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let Some(secret) = objects.secrets.get_mut(&name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("secrets \"{name}\" not found"),
        );
    };
    merge_patch(secret, &patch);
    axum::Json(secret.clone()).into_response()
}

impl KubeApi {
    /// Starts the server on an ephemeral port.
    pub async fn start() -> Self {
        let (events, _) = broadcast::channel(1024);
        let shared = Shared {
            objects: Arc::new(Mutex::new(Objects::default())),
            events,
        };
        let app = Router::new()
            .route(
                "/apis/batch/v1/namespaces/{namespace}/jobs",
                get(jobs_get).post(jobs_create),
            )
            .route(
                "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
                get(job_get).delete(job_delete),
            )
            .route("/api/v1/namespaces/{namespace}/pods", get(pods_get))
            .route(
                "/api/v1/namespaces/{namespace}/pods/{name}/log",
                get(pod_log),
            )
            .route(
                "/api/v1/namespaces/{namespace}/secrets",
                axum::routing::post(secrets_create),
            )
            .route(
                "/api/v1/namespaces/{namespace}/secrets/{name}",
                axum::routing::patch(secret_patch),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Self {
            addr,
            shared,
            shutdown,
        }
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Objects, &broadcast::Sender<Event>) -> T) -> T {
        let mut objects = self.shared.objects.lock().expect("lock");
        f(&mut objects, &self.shared.events)
    }

    /// The stored Job of this name.
    pub fn job(&self, name: &str) -> Option<Value> {
        self.with(|o, _| o.jobs.get(name).cloned())
    }

    /// The stored Secret of this name.
    pub fn secret(&self, name: &str) -> Option<Value> {
        self.with(|o, _| o.secrets.get(name).cloned())
    }

    /// Stores a Job as if someone else had created it (no pod).
    pub fn put_job(&self, job: Value) {
        self.with(|o, events| o.store(events, Kind::Job, job));
    }

    /// Appends to the log of Job `name`'s pod, as its trainer writes.
    pub fn append_log(&self, name: &str, text: &str) {
        self.with(|o, _| {
            o.logs
                .entry(format!("{name}-x7k2p"))
                .or_default()
                .push_str(text);
        });
    }

    /// Names of the stored pods.
    pub fn pods(&self) -> Vec<String> {
        self.with(|o, _| o.pods.keys().cloned().collect())
    }

    /// The requests that changed or listed something, in order.
    pub fn requests(&self) -> Vec<String> {
        self.with(|o, _| o.requests.clone())
    }

    /// Plays the kubelet: the pod of Job `name` enters `phase`; a terminated trainer
    /// reports `exit_code`; `log` becomes its log.
    pub fn set_pod(&self, name: &str, phase: &str, exit_code: Option<i32>, log: &str) {
        self.with(|o, events| {
            let pod_name = format!("{name}-x7k2p");
            let Some(mut pod) = o.pods.get(&pod_name).cloned() else {
                panic!("no pod {pod_name}");
            };
            let mut state = match exit_code {
                Some(code) => json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }}}),
                None => json!({"running": {"startedAt": "2026-11-22T00:00:02Z"}}),
            };
            // `FallbackToLogsOnError`: a failed container's last log lines (at most 80) are
            // its termination message.
            let policy = &pod["spec"]["containers"][0]["terminationMessagePolicy"];
            if exit_code.is_some_and(|code| code != 0) && *policy == json!("FallbackToLogsOnError") {
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(80)..].join("\n");
                state["terminated"]["message"] = json!(tail);
            }
            pod["status"] = json!({
                "phase": phase,
                "containerStatuses": [{
                    "name": "trainer",
                    "image": pod["spec"]["containers"][0]["image"].clone(),
                    "imageID": "sha256:0",
                    "ready": exit_code.is_none(),
                    "restartCount": 0,
                    "state": state,
                }],
            });
            o.logs.insert(pod_name, log.to_string());
            o.store(events, Kind::Pod, pod);
        });
    }

    /// Plays the Job controller: Job `name` completes or fails with `reason`.
    pub fn finish_job(&self, name: &str, success: bool, reason: &str, message: &str) {
        self.with(|o, events| {
            let Some(mut job) = o.jobs.get(name).cloned() else {
                panic!("no job {name}");
            };
            let condition = if success { "Complete" } else { "Failed" };
            job["status"] = json!({
                "succeeded": if success { 1 } else { 0 },
                "failed": if success { 0 } else { 1 },
                "conditions": [{
                    "type": condition,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                }],
            });
            o.store(events, Kind::Job, job);
        });
    }

    /// Refuses the next `count` Job deletes with 500.
    pub fn refuse_deletes(&self, count: usize) {
        self.with(|o, _| o.refuse_deletes = count);
    }

    /// Plays the scheduler: Job `name`'s pod cannot be placed (it stays Pending).
    pub fn unschedulable(&self, name: &str, message: &str) {
        self.with(|o, events| {
            let pod_name = format!("{name}-x7k2p");
            let Some(mut pod) = o.pods.get(&pod_name).cloned() else {
                panic!("no pod {pod_name}");
            };
            pod["status"] = json!({
                "phase": "Pending",
                "conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }],
            });
            o.store(events, Kind::Pod, pod);
        });
    }

    /// Deletes a Job behind training-service's back (an operator, or its TTL).
    pub fn delete_job(&self, name: &str) {
        self.with(|o, events| {
            o.remove(events, Kind::Job, name);
        });
    }

    /// Stops the server.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
