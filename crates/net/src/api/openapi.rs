//! The HTTP API's OpenAPI 3.1 description, `GET /api/v1/openapi.json`,
//! generated from the same route table the router is built from: a route
//! cannot exist without being described, nor be described without
//! existing. Each operation's summary and who may call it live here, keyed
//! by the table's operation name; a test refuses a name without one.

use super::*;

/// Who may call an operation (the API's roles; `admin` may call all).
#[derive(Clone, Copy)]
enum Who {
    /// No token (logging in, this document).
    Anyone,
    /// Any valid token or session.
    Any,
    /// Admins only.
    Admin,
    /// Supervisors (of the firm of their token) and admins.
    Supervisor,
    /// The operator themself (their token or desk session), and admins.
    Operator,
    /// The operator, a supervisor of their firm, or an admin.
    Operates,
    /// A supervisor of the operator's firm (not an admin).
    Supervises,
    /// `callbacks` tokens (web forms), supervisors and admins.
    Callbacks,
}

impl Who {
    fn roles(self) -> &'static [&'static str] {
        match self {
            Self::Anyone => &[],
            Self::Any => &["admin", "supervisor", "agent", "callbacks"],
            Self::Admin => &["admin"],
            Self::Supervisor => &["admin", "supervisor"],
            Self::Operator => &["admin", "agent"],
            Self::Operates => &["admin", "supervisor", "agent"],
            Self::Supervises => &["supervisor"],
            Self::Callbacks => &["admin", "supervisor", "callbacks"],
        }
    }
}

/// What a WebSocket operation answers instead of JSON.
const WEBSOCKETS: &[&str] = &["agent_events", "queue_events"];

/// Each operation of the route table: its summary and who may call it.
const OPERATIONS: &[(&str, &str, Who)] = &[
    (
        "callbacks_list",
        "Callbacks of the caller's firm, newest first",
        Who::Callbacks,
    ),
    (
        "callbacks_create",
        "Ask for a callback (\"Ti chiamiamo noi\")",
        Who::Callbacks,
    ),
    ("callbacks_get", "One callback", Who::Callbacks),
    (
        "callbacks_patch",
        "Move or reschedule a callback",
        Who::Callbacks,
    ),
    ("callbacks_delete", "Cancel a callback", Who::Callbacks),
    ("scripts_get", "An operator script", Who::Any),
    (
        "agent_call",
        "The call on an operator's desk",
        Who::Operator,
    ),
    (
        "agent_figures",
        "The operator's own figures: their queues now, their calls today",
        Who::Operator,
    ),
    (
        "agent_events",
        "An operator's desk as a WebSocket (and their browser phone)",
        Who::Operator,
    ),
    ("agent_state", "Pause or resume an operator", Who::Operates),
    (
        "agent_monitor",
        "Join the operator's conversation from a browser (listen, whisper, barge): SDP offer in, answer out",
        Who::Supervises,
    ),
    (
        "agent_monitor_mode",
        "Listen, whisper or barge from now (the supervisor on the call)",
        Who::Supervises,
    ),
    (
        "agent_monitor_end",
        "Leave the operator's conversation",
        Who::Supervises,
    ),
    (
        "agent_preview",
        "Accept or skip a campaign's preview contact",
        Who::Operator,
    ),
    (
        "queues_get",
        "Queues and operators now (supervisor view)",
        Who::Supervisor,
    ),
    (
        "reports_queues",
        "Each queue's service figures per interval (JSON, or CSV with Accept: text/csv)",
        Who::Supervisor,
    ),
    (
        "reports_agents",
        "Each operator's logged-in time, breaks, talk and calls per interval (JSON, or CSV with Accept: text/csv)",
        Who::Supervisor,
    ),
    (
        "queue_events",
        "The supervisor view as a WebSocket",
        Who::Supervisor,
    ),
    (
        "agents_get",
        "Operators provisioned through the API",
        Who::Admin,
    ),
    ("agents_create", "Provision an operator", Who::Admin),
    ("agent_put", "Change a provisioned operator", Who::Admin),
    ("agent_delete", "Remove a provisioned operator", Who::Admin),
    (
        "cluster_get",
        "The national network as this node sees it",
        Who::Supervisor,
    ),
    ("config_reload", "Reload the configuration", Who::Admin),
    ("login_whoami", "Who the session or token is", Who::Any),
    ("login", "Open a desk or wallboard session", Who::Anyone),
    ("logout", "End the session", Who::Anyone),
    ("campaigns_list", "Outbound campaigns", Who::Supervisor),
    ("campaigns_create", "Create a campaign", Who::Supervisor),
    (
        "campaigns_get",
        "One campaign with its figures",
        Who::Supervisor,
    ),
    (
        "campaigns_delete",
        "Delete a campaign and its contacts",
        Who::Supervisor,
    ),
    ("campaigns_start", "Start a campaign", Who::Supervisor),
    ("campaigns_pause", "Pause a campaign", Who::Supervisor),
    ("campaigns_stop", "Stop a campaign", Who::Supervisor),
    (
        "campaign_contacts_list",
        "A campaign's contacts",
        Who::Supervisor,
    ),
    (
        "campaign_contacts_import",
        "Import contacts (JSON or CSV)",
        Who::Supervisor,
    ),
    (
        "dnc_add",
        "Add numbers to the firm's do-not-call list",
        Who::Supervisor,
    ),
    (
        "dnc_delete",
        "Remove a number from the do-not-call list",
        Who::Supervisor,
    ),
    (
        "calls_disposition",
        "A contact's outcome, from the operator",
        Who::Operator,
    ),
    (
        "calls_answers",
        "The operator script's answers for a call",
        Who::Operator,
    ),
    ("openapi", "This document", Who::Anyone),
];

/// The document (built once: the table does not change while running).
pub(super) fn document() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> Value {
    let mut paths = serde_json::Map::new();
    for r in table() {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        let mut item = serde_json::Map::new();
        for (method, name) in r.methods.iter().zip(r.names) {
            let (summary, who) = OPERATIONS
                .iter()
                .find(|(n, ..)| n == name)
                .map_or(("", Who::Admin), |(_, s, w)| (*s, *w));
            let mut op = json!({
                "operationId": name,
                "summary": summary,
                "x-centralino-roles": who.roles(),
                "responses": responses(name),
            });
            if !params.is_empty() {
                op["parameters"] = json!(params);
            }
            if matches!(who, Who::Anyone) {
                op["security"] = json!([]);
            }
            if matches!(*method, "POST" | "PUT" | "PATCH") {
                op["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": {"type": "object"}}}
                });
            }
            item.insert(method.to_ascii_lowercase(), op);
        }
        paths.insert(r.path.to_owned(), Value::Object(item));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Centralino",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP API of a Centralino node. Bearer tokens \
                (`api.tokens`, `Authorization: Bearer ...`) or the desk's session \
                cookie; every refusal is a JSON `{\"error\"}` with a 4xx status, or 503 when the node cannot do it now. \
                `/metrics` and `/healthz` are served beside it.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "centralino_session"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    })
}

fn responses(name: &str) -> Value {
    let error = |what: &str| {
        json!({
            "description": what,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        })
    };
    let ok = if WEBSOCKETS.contains(&name) {
        json!({"101": {"description": "WebSocket: JSON text frames"}, "426": error("not a WebSocket upgrade")})
    } else {
        json!({"200": {"description": "OK", "content": {"application/json": {"schema": {}}}}})
    };
    let mut all = ok;
    for (code, what) in [
        ("400", "invalid request"),
        ("401", "no valid token or session"),
        ("403", "not allowed for this token's role or firm"),
        ("404", "not found"),
        ("409", "conflicts with the state it acts on"),
        ("503", "the node cannot do it now"),
    ] {
        all[code] = error(what);
    }
    all
}

/// `GET /api/v1/openapi.json`: public, like the routes it describes.
pub(super) async fn get_openapi() -> Response {
    ok(StatusCode::OK, document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the table is described, under its own operation
    /// name, with a summary and roles; no description names an operation
    /// that does not exist.
    #[test]
    fn the_document_describes_exactly_the_routes_that_exist() {
        let doc = build();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut names = Vec::new();
        for r in table() {
            for (method, name) in r.methods.iter().zip(r.names) {
                let op = &doc["paths"][r.path][method.to_ascii_lowercase()];
                assert_eq!(op["operationId"], *name, "{method} {}", r.path);
                assert!(
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{name}: no summary in OPERATIONS"
                );
                for p in r.path.split('/').filter(|s| s.starts_with('{')) {
                    let p = p.trim_matches(['{', '}']);
                    assert!(
                        op["parameters"]
                            .as_array()
                            .is_some_and(|ps| ps.iter().any(|x| x["name"] == p)),
                        "{name}: parameter {p}"
                    );
                }
                names.push(*name);
            }
            assert_eq!(r.methods.len(), r.names.len(), "{}", r.path);
        }
        for (name, ..) in OPERATIONS {
            assert!(names.contains(name), "{name} described but no route has it");
        }
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), table().len());
        assert_eq!(
            doc["paths"]["/api/v1/openapi.json"]["get"]["security"],
            json!([])
        );
    }
}
