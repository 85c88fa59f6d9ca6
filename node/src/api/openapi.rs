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

#[cfg(test)]
mod tests {
    #[test]
    fn the_description_holds_every_operation_with_its_schemas() {
        let doc = super::super::openapi();
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["openapi"], "3.1.0");
        let paths = json["paths"].as_object().unwrap();
        let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        // 12 merchant operations, 4 of health and status, 26 on the admin plane.
        assert_eq!(
            operations,
            42,
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
}
