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
    (
        "scripts_get",
        "An operator script, of a call their desk showed (admins: any)",
        Who::Operator,
    ),
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
        "A call's outcome (a citizen's call or a campaign contact's), from the operator",
        Who::Operator,
    ),
    (
        "calls_answers_get",
        "A call's script answers and outcome (health data: audited)",
        Who::Supervisor,
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

/// The request bodies the API reads with a type of its own: their JSON
/// Schema (2020-12, OpenAPI 3.1's dialect) is derived from the very types
/// the handlers deserialize (`schemars` reads the same serde attributes),
/// so the document cannot drift from what a request must be. `one_or_many`
/// for bodies that also take a JSON array of them (and CSV).
fn request_schema(name: &str, g: &mut schemars::SchemaGenerator) -> Option<(Value, bool)> {
    let s = |v: schemars::Schema| v.to_value();
    Some(match name {
        "callbacks_create" => (s(g.subschema_for::<CreateBody>()), false),
        "callbacks_patch" => (s(g.subschema_for::<PatchBody>()), false),
        "campaign_contacts_import" => (s(g.subschema_for::<ContactIn>()), true),
        "dnc_add" => (s(g.subschema_for::<DncIn>()), false),
        "calls_disposition" => (s(g.subschema_for::<DispositionIn>()), false),
        "calls_answers" => (s(g.subschema_for::<AnswersBody>()), false),
        "agent_state" => (s(g.subschema_for::<StateBody>()), false),
        "agent_preview" => (s(g.subschema_for::<PreviewBody>()), false),
        "agent_monitor" | "agent_monitor_mode" => {
            (s(g.subschema_for::<monitor::MonitorBody>()), false)
        }
        "agents_create" => (s(g.subschema_for::<OperatorIn>()), true),
        "agent_put" => (s(g.subschema_for::<OperatorIn>()), false),
        "login" => (
            json!({"oneOf": [
                s(g.subschema_for::<LoginBody>()),
                s(g.subschema_for::<TokenLoginBody>()),
            ]}),
            false,
        ),
        _ => return None,
    })
}

/// Operations whose body is JSON without a type of its own here: a
/// campaign is read by the campaigns crate's parser (README, "Outbound
/// campaigns"). The other writes without a schema take no body.
const UNTYPED_BODIES: &[&str] = &["campaigns_create"];

/// Writes that take no body (actions on the record their path names).
const NO_BODY: &[&str] = &[
    "config_reload",
    "campaigns_start",
    "campaigns_pause",
    "campaigns_stop",
];

fn build() -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
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
                let typed = request_schema(name, &mut generator);
                let required = !NO_BODY.contains(name);
                let content = match typed {
                    Some((schema, false)) => json!({"application/json": {"schema": schema}}),
                    Some((schema, true)) => json!({
                        "application/json": {"schema": {"oneOf": [schema, {"type": "array", "items": schema}]}},
                        "text/csv": {"schema": {"type": "string"}},
                    }),
                    None => json!({"application/json": {"schema": {"type": "object"}}}),
                };
                op["requestBody"] = json!({"required": required, "content": content});
                if UNTYPED_BODIES.contains(name) {
                    op["requestBody"]["description"] =
                        json!("A campaign as README's \"Outbound campaigns\" describes it.");
                }
            }
            item.insert(method.to_ascii_lowercase(), op);
        }
        paths.insert(r.path.to_owned(), Value::Object(item));
    }
    // Served beside the API (not in its route table), without a token.
    let text = |what: &str| {
        json!({"get": {
            "operationId": what,
            "summary": match what {
                "metrics" => "Prometheus metrics (text exposition format)",
                _ => "Liveness and readiness: 200 `ok`, or 503 with what is wrong",
            },
            "security": [],
            "responses": {
                "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "503": {"description": "not ready", "content": {"text/plain": {"schema": {"type": "string"}}}},
            },
        }})
    };
    paths.insert("/metrics".into(), text("metrics"));
    paths.insert("/healthz".into(), text("healthz"));
    let mut schemas = serde_json::Map::new();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        }),
    );
    schemas.extend(generator.take_definitions(true));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Centralino",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP API of a Centralino node. Bearer tokens \
                (`api.tokens`, `Authorization: Bearer ...`) or the desk's session \
                cookie; every refusal is a JSON `{\"error\"}` with a 4xx status, or 503 when the node cannot do it now. \
                Request bodies are described by schemas derived from the types the node reads them into.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "centralino_session"},
            },
            "schemas": schemas,
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
        // The API's routes, and the two pages served beside it.
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), table().len() + 2);
        for public in ["/api/v1/openapi.json", "/metrics", "/healthz"] {
            assert_eq!(
                doc["paths"][public]["get"]["security"],
                json!([]),
                "{public}"
            );
        }
    }

    /// Every write that takes a JSON body has a schema derived from the
    /// type its handler reads, found in the components, and the schemas say
    /// what serde enforces (required fields, no unknown ones), except the
    /// few listed as untyped.
    #[test]
    fn request_bodies_are_described_by_the_types_the_handlers_read() {
        let doc = build();
        let schemas = &doc["components"]["schemas"];
        let resolve = |s: &Value| -> Value {
            match s["$ref"].as_str() {
                Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
                None => s.clone(),
            }
        };
        let mut typed = 0;
        for r in table() {
            for (method, name) in r.methods.iter().zip(r.names) {
                let op = &doc["paths"][r.path][method.to_ascii_lowercase()];
                let Some(body) = op.get("requestBody") else {
                    continue;
                };
                let schema = &body["content"]["application/json"]["schema"];
                if UNTYPED_BODIES.contains(name) || NO_BODY.contains(name) {
                    assert_eq!(schema, &json!({"type": "object"}), "{name}");
                    assert_eq!(body["required"], !NO_BODY.contains(name), "{name}");
                    continue;
                }
                typed += 1;
                let one = schema["oneOf"].as_array().map_or(schema, |v| &v[0]);
                let resolved = resolve(one);
                assert!(
                    resolved["properties"].is_object(),
                    "{name}: {one} resolves to {resolved}"
                );
                assert_eq!(resolved["additionalProperties"], false, "{name}");
            }
        }
        assert!(typed >= 13, "{typed} typed bodies");
        let create = &schemas["CreateBody"];
        let mut required: Vec<&str> = create["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        required.sort_unstable();
        assert_eq!(required, ["number", "queue"], "{create}");
        // The lists name real operations, and only those without a type.
        for name in UNTYPED_BODIES.iter().chain(NO_BODY) {
            assert!(OPERATIONS.iter().any(|(n, ..)| n == name), "{name}");
            assert!(request_schema(name, &mut schemars::SchemaGenerator::default()).is_none());
        }
    }
}
