//! The description's frame: title, security schemes, tags and the problem schema. The
//! paths come from the handlers (`#[utoipa::path]`) as the routers register them.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::Modify;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "kura",
        description = "A replicated payment-card token vault and payment gateway. Paths under /admin/ are served on the admin plane (admin_addr), the rest on the client API (api_addr). Every error is application/problem+json with a stable code.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&Security),
    components(schemas(kura_types::Problem)),
    tags(
        (name = "tokens", description = "tokenize cards and read tokens"),
        (name = "cards", description = "a merchant's members' cards on file"),
        (name = "payments", description = "authorise, capture, void, refund; exactly once per idempotency key"),
        (name = "health", description = "liveness, readiness, status, metrics"),
        (name = "merchants", description = "admin plane: merchants and their keys"),
        (name = "keys", description = "admin plane: data keys and the KEK"),
        (name = "audit", description = "admin plane: the hash-chained audit trail"),
        (name = "cluster", description = "admin plane: formation, leadership, maintenance"),
    ),
)]
pub struct ApiDoc;

/// The two ways callers authenticate.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "merchant_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a merchant's secret key (sk_…) or, for one-time tokens only, its publishable key (pk_…)",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "operator",
            SecurityScheme::MutualTls {
                description: Some(
                    "an operator's client certificate (kura://operator/<role>/<name>) from the cluster CA; or the break-glass token where configured".into(),
                ),
                extensions: None,
            },
        );
    }
}

/// Renames a response link's fields to what OpenAPI calls them (`operationId`,
/// `operationRef`, `requestBody`): utoipa 5.5 writes them in snake_case, and a tool
/// reading the description (a client generator, schemathesis following links) then
/// finds no target operation.
pub(super) fn camel_case_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut());
    let responses = operations
        .filter_map(|op| op.get_mut("responses").and_then(|r| r.as_object_mut()))
        .flat_map(|r| r.values_mut());
    let links = responses
        .filter_map(|r| r.get_mut("links").and_then(|l| l.as_object_mut()))
        .flat_map(|l| l.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (from, to) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(from) {
                link.insert(to.to_owned(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_description_holds_every_operation_with_its_schemas() {
        let doc = super::super::openapi();
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["openapi"], "3.1.0");
        let paths = json["paths"].as_object().unwrap();
        let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        // 12 merchant operations, 4 of health and status, 28 on the admin plane.
        assert_eq!(
            operations,
            44,
            "{:?}",
            paths
                .iter()
                .map(|(k, v)| (k, v.as_object().unwrap().keys().collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        );
        let schemas = json["components"]["schemas"].as_object().unwrap();
        for s in [
            "Token",
            "TokenizeIn",
            "Payment",
            "AuthorizeIn",
            "Problem",
            "ClusterStatus",
            "Scrub",
            "ScrubState",
            "Compare",
            "CompareState",
            "AddMemberIn",
            "MemberOut",
        ] {
            assert!(schemas.contains_key(s), "schema {s} missing");
        }
        let tokenize = &paths["/v1/tokens"]["post"];
        assert_eq!(
            tokenize["security"][0]["merchant_key"],
            serde_json::json!([])
        );
        assert!(tokenize["responses"]["201"].is_object());
    }

    #[test]
    fn links_name_operations_that_exist_as_openapi_spells_it() {
        let json = super::super::openapi();
        let ids: Vec<&str> = json["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let mut links = 0;
        for (path, item) in json["paths"].as_object().unwrap() {
            for op in item.as_object().unwrap().values() {
                for response in op["responses"].as_object().unwrap().values() {
                    let Some(ls) = response.get("links") else {
                        continue;
                    };
                    for (name, link) in ls.as_object().unwrap() {
                        links += 1;
                        let target = link["operationId"].as_str();
                        assert!(
                            target.is_some_and(|t| ids.contains(&t)),
                            "{path} link {name} has no known operationId: {link}"
                        );
                        assert!(link.get("operation_id").is_none(), "{link}");
                        assert!(link.get("request_body").is_none(), "{link}");
                    }
                }
            }
        }
        // Tokenize → its token and a payment; a payment and each change → the
        // payment, its capture, void and refund.
        assert_eq!(links, 2 + 4 + 3 * 4);
        let pay = &json["paths"]["/v1/tokens"]["post"]["responses"]["201"]["links"]["pay"];
        assert_eq!(pay["requestBody"]["token"], "$response.body#/token");
    }

    #[test]
    fn every_operation_has_an_id_of_its_own() {
        // OpenAPI requires it, and a client generated from the description names its
        // methods by it: two `create`s would collide.
        let json = serde_json::to_value(super::super::openapi()).unwrap();
        let mut seen = std::collections::BTreeMap::new();
        for (path, ops) in json["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_default().to_owned();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                if let Some(other) = seen.insert(id.clone(), format!("{method} {path}")) {
                    panic!("{method} {path} and {other} share the operationId {id}");
                }
            }
        }
        assert_eq!(seen.len(), 44);
    }
}
