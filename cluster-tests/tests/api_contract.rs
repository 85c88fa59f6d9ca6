//! The API as a contract, against three real nodes: the OpenAPI description a node
//! serves names every route the nodes answer and only those, and what the handlers
//! answer to the documented examples (and to refusals) matches the description's
//! schemas, field for field.

use http::Method;
use kura_cluster_tests::procs::{acquirer_toml, raw, AcquirerSim, ProcCluster};
use kura_cluster_tests::schema;
use kura_sdk::{Error, ProblemCode};
use serde_json::{json, Value};

/// `path` with its parameters filled: ids that exist where given, else ids of nothing.
fn fill(path: &str, ids: &[(&str, &str)]) -> String {
    let mut p = path.to_owned();
    for (name, value) in ids {
        p = p.replace(&format!("{{{name}}}"), value);
    }
    p
}

/// The response schema the description gives `method path` for `status`: the exact
/// status, else its class (`4XX`).
fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let responses = &doc["paths"][path][method]["responses"];
    let r = responses
        .get(status.to_string())
        .or_else(|| responses.get(format!("{}XX", status / 100)))
        .unwrap_or_else(|| panic!("{method} {path} does not describe a {status} answer"));
    let content = r["content"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} {status}: no content described"));
    let (_, media) = content.iter().next().unwrap();
    &media["schema"]
}

/// Checks an answer of `method path` against the description.
fn conforms(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let s = response_schema(doc, path, method, status);
    if let Err(e) = schema::check(body, s, doc) {
        panic!("{method} {path} answered {status} off its description: {e}\n{body:#}");
    }
}

/// The documented example of `method path`'s request body (an optional body is
/// described as `null` or its schema).
fn example(doc: &Value, path: &str, method: &str) -> Value {
    let s = &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
    let any_of = s["oneOf"].as_array().into_iter().flatten();
    let name = (s["$ref"].as_str())
        .or_else(|| any_of.filter_map(|o| o["$ref"].as_str()).next())
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .unwrap_or_else(|| panic!("{method} {path}: no request schema"));
    doc["components"]["schemas"][name]["example"].clone()
}

/// A merchant-key request to node 0, checked against the description.
struct Merchant<'a> {
    c: &'a ProcCluster,
    doc: &'a Value,
    key: String,
}

impl Merchant<'_> {
    async fn send(
        &self,
        method: &str,
        path: &str,
        ids: &[(&str, &str)],
        body: Option<Value>,
        idem: Option<&str>,
    ) -> (u16, Value) {
        let auth = format!("Bearer {}", self.key);
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(k) = idem {
            headers.push(("idempotency-key", k));
        }
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = raw(&self.c.api[0], m, &fill(path, ids), &headers, body).await;
        conforms(self.doc, path, method, r.status, &r.body);
        (r.status, r.body)
    }
}

/// An operator's request, checked against the description when it succeeds (the SDK
/// turns refusals into errors; their codes are checked by the caller).
async fn admin(
    c: &ProcCluster,
    doc: &Value,
    method: &str,
    path: &str,
    ids: &[(&str, &str)],
    body: Option<Value>,
) -> Result<Value, Error> {
    let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let r = c.admin().call(m, &fill(path, ids), body).await?;
    conforms(doc, path, method, r.status.as_u16(), &r.body);
    Ok(r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_matches_the_routes_and_what_the_handlers_answer() {
    let (cafis, cardnet) = (AcquirerSim::start().await, AcquirerSim::start().await);
    let c = ProcCluster::start(&acquirer_toml(&cafis, &cardnet, 3_000));
    c.init().await;
    let sk = c.merchant("contract").await;
    let doc = c
        .client(&[0], &sk)
        .openapi()
        .await
        .expect("the description");
    assert_eq!(doc["openapi"], "3.1.0");

    // Every described operation is routed: answered by its handler or the layers in
    // front of it, never "no such route" or "method not allowed". Ids name nothing, so
    // no operation changes anything a later step relies on.
    let nothing = [
        ("token", "tok_0000000000000000000000"),
        ("id", "nobody"),
        ("member_id", "m-none"),
        ("name", "nobody"),
        ("version", "999"),
    ];
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let p = fill(path, &nothing);
            let (status, code) = if path.starts_with("/admin/") {
                match c.admin().call(m, &p, None).await {
                    Ok(r) => (r.status.as_u16(), None),
                    Err(Error::Api { status, code, .. }) => (status, Some(code)),
                    Err(e) => panic!("{method} {p}: {e}"),
                }
            } else {
                let r = raw(&c.api[0], m, &p, &[], None).await;
                (r.status, r.body["code"].as_str().map(ProblemCode::parse))
            };
            assert!(
                status != 405 && code != Some(ProblemCode::RouteNotFound),
                "{method} {p} is described but not routed ({status} {code:?})"
            );
        }
    }
    assert_eq!(operations, 44);
    // And the probe tells: a path nobody routes, a method a path does not take.
    let none = raw(&c.api[0], Method::GET, "/v1/nothing", &[], None).await;
    assert_eq!(
        (none.status, none.body["code"].as_str()),
        (404, Some("route_not_found"))
    );
    let wrong = raw(&c.api[0], Method::DELETE, "/v1/tokens", &[], None).await;
    assert_eq!(wrong.status, 405);

    // The documented examples, and what they are answered, field for field.
    let m = Merchant {
        c: &c,
        doc: &doc,
        key: sk.clone(),
    };
    let tokenize = example(&doc, "/v1/tokens", "post");
    let (status, cof) = m
        .send("post", "/v1/tokens", &[], Some(tokenize.clone()), None)
        .await;
    assert_eq!(status, 201, "{cof}");
    let cof = cof["token"].as_str().unwrap().to_owned();
    let (status, _) = m
        .send("get", "/v1/tokens/{token}", &[("token", &cof)], None, None)
        .await;
    assert_eq!(status, 200);
    let mut one_time = tokenize.clone();
    one_time["kind"] = json!("one_time");
    one_time.as_object_mut().unwrap().remove("member_id");
    one_time["card"]["cvc"] = json!("123");
    let (status, ott) = m
        .send("post", "/v1/tokens", &[], Some(one_time), None)
        .await;
    assert_eq!((status, ott["cvc"].as_str()), (201, Some("available")));
    let mut register = example(&doc, "/v1/members/{member_id}/cards", "post");
    register["token"] = ott["token"].clone();
    let member = [("member_id", "member-1")];
    let (status, again) = m
        .send(
            "post",
            "/v1/members/{member_id}/cards",
            &member,
            Some(register),
            None,
        )
        .await;
    assert_eq!(
        (status, again["token"].as_str()),
        (200, Some(cof.as_str())),
        "already on file"
    );
    let (status, cards) = m
        .send("get", "/v1/members/{member_id}/cards", &member, None, None)
        .await;
    assert_eq!(
        (status, cards["cards"].as_array().map(Vec::len)),
        (200, Some(1))
    );

    let mut pay = example(&doc, "/v1/payments", "post");
    pay["token"] = json!(cof);
    let (status, payment) = m
        .send("post", "/v1/payments", &[], Some(pay), Some("c-1"))
        .await;
    assert_eq!(
        (status, payment["state"].as_str()),
        (201, Some("authorized")),
        "{payment}"
    );
    let id = payment["id"].as_str().unwrap().to_owned();
    let pid = [("id", id.as_str())];
    let amount = example(&doc, "/v1/payments/{id}/capture", "post");
    let (status, _) = m
        .send(
            "post",
            "/v1/payments/{id}/capture",
            &pid,
            Some(amount.clone()),
            Some("c-2"),
        )
        .await;
    assert_eq!(status, 200);
    let (status, refunded) = m
        .send(
            "post",
            "/v1/payments/{id}/refund",
            &pid,
            Some(amount),
            Some("c-3"),
        )
        .await;
    assert_eq!(
        (status, refunded["refunded_amount"].as_u64()),
        (200, Some(1000))
    );
    let (status, _) = m
        .send("post", "/v1/payments/{id}/void", &pid, None, Some("c-4"))
        .await;
    assert_eq!(status, 409, "a captured payment is not voided");
    let (status, _) = m.send("get", "/v1/payments/{id}", &pid, None, None).await;
    assert_eq!(status, 200);
    let order = "/v1/payments?order_id=order-1001";
    let r = raw(
        &c.api[0],
        Method::GET,
        order,
        &[("authorization", &format!("Bearer {sk}"))],
        None,
    )
    .await;
    conforms(&doc, "/v1/payments", "get", r.status, &r.body);
    assert_eq!(r.body["payments"][0]["id"], json!(id));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let report = format!("/v1/reports/payments?from={}&to={}", now - 60, now + 60);
    let r = raw(
        &c.api[0],
        Method::GET,
        &report,
        &[("authorization", &format!("Bearer {sk}"))],
        None,
    )
    .await;
    conforms(&doc, "/v1/reports/payments", "get", r.status, &r.body);
    assert_eq!(r.body["count"], 1);
    // Refusals are problems as described.
    let (status, p) = m
        .send(
            "get",
            "/v1/tokens/{token}",
            &[("token", "tok_0000000000000000000000")],
            None,
            None,
        )
        .await;
    assert_eq!((status, p["code"].as_str()), (404, Some("token_not_found")));
    let (status, p) = m
        .send(
            "post",
            "/v1/payments",
            &[],
            Some(json!({"token": 1})),
            Some("c-5"),
        )
        .await;
    assert_eq!((status, p["code"].as_str()), (400, Some("invalid_json")));
    for (path, method) in [
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/v1/cluster/status", "get"),
    ] {
        let r = raw(&c.api[0], Method::GET, path, &[], None).await;
        conforms(&doc, path, method, r.status, &r.body);
    }

    // The admin plane.
    let shop = example(&doc, "/admin/v1/merchants", "post");
    let made = admin(&c, &doc, "post", "/admin/v1/merchants", &[], Some(shop))
        .await
        .unwrap();
    assert!(made["secret_key"]
        .as_str()
        .is_some_and(|k| k.starts_with("sk_")));
    let shop_id = made["merchant_id"].as_str().unwrap().to_owned();
    let mid = [("id", shop_id.as_str())];
    let update = example(&doc, "/admin/v1/merchants/{id}", "patch");
    let changed = admin(
        &c,
        &doc,
        "patch",
        "/admin/v1/merchants/{id}",
        &mid,
        Some(update),
    )
    .await
    .unwrap();
    assert_eq!(changed["token_format"], "numeric");
    let rotate = example(&doc, "/admin/v1/merchants/{id}/rotate-key", "post");
    let rotated = admin(
        &c,
        &doc,
        "post",
        "/admin/v1/merchants/{id}/rotate-key",
        &mid,
        Some(rotate),
    )
    .await
    .unwrap();
    assert!(rotated["publishable_key"].is_string() && rotated.get("secret_key").is_none());
    admin(&c, &doc, "get", "/admin/v1/merchants/{id}", &mid, None)
        .await
        .unwrap();
    admin(&c, &doc, "get", "/admin/v1/merchants", &[], None)
        .await
        .unwrap();
    admin(&c, &doc, "get", "/admin/v1/keys", &[], None)
        .await
        .unwrap();
    admin(&c, &doc, "post", "/admin/v1/keys/verify", &[], None)
        .await
        .unwrap();
    let page = admin(&c, &doc, "get", "/admin/v1/audit", &[], None)
        .await
        .unwrap();
    assert!(page["total"].as_u64().unwrap() > 5);
    let head = admin(&c, &doc, "get", "/admin/v1/audit/head", &[], None)
        .await
        .unwrap();
    let verify = json!({ "signed_head": head["signed_head"] });
    let verified = admin(
        &c,
        &doc,
        "post",
        "/admin/v1/audit/verify",
        &[],
        Some(verify),
    )
    .await
    .unwrap();
    assert_eq!(verified["exported_head"]["ok"], true, "{verified}");
    admin(&c, &doc, "get", "/admin/v1/cluster/status", &[], None)
        .await
        .unwrap();
    let init = admin(&c, &doc, "post", "/admin/v1/init", &[], None)
        .await
        .unwrap();
    assert_eq!(init["already_initialized"], true);
    let transfer = example(&doc, "/admin/v1/leader/transfer", "post");
    let led = admin(
        &c,
        &doc,
        "post",
        "/admin/v1/leader/transfer",
        &[],
        Some(transfer),
    )
    .await
    .unwrap();
    assert_eq!(led["leader"], "dr");
    let faults = example(&doc, "/admin/v1/faults", "post");
    let off = admin(&c, &doc, "post", "/admin/v1/faults", &[], Some(faults)).await;
    assert!(
        matches!(
            off,
            Err(Error::Api {
                status: 403,
                code: ProblemCode::FaultInjectionDisabled,
                ..
            })
        ),
        "{off:?}"
    );
}
