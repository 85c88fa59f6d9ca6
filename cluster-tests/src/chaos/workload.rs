//! The clients: workers that tokenize, pay, capture, refund, void, delete and read
//! while faults fly, and a checker that sets the cluster up, writes once after healing
//! and reads everything back once the replicas have converged. Every answer becomes an
//! oracle event and a trace line.

use super::rng::Rng;
use super::{Shared, World};
use crate::oracle::{Event, EventKind, Level, PaymentSeen};
use kura_node::sim;
use kura_sdk::{
    AddMemberIn, AuthorizeIn, CardIn, Client, ClientConfig, CreateMerchantIn, Error, Payment, Role,
    TokenFormat, TokenizeIn,
};
use std::sync::Arc;
use std::time::Duration;

fn now_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

/// A merchant's client of every node's client API, over TLS.
fn client(world: &World, bearer: &str, attempts: u32) -> Client {
    let tls = world.lock().tls.clone().expect("the run's TLS");
    client_on(sim::API_PORT, bearer, tls.client, attempts)
}

/// The checker's operator client of every node's admin plane.
fn operator(world: &World, attempts: u32) -> Client {
    let tls = world.lock().tls.clone().expect("the run's TLS");
    client_on(sim::ADMIN_PORT, "", tls.operator, attempts)
}

/// A client of every node's listener on `port`, speaking TLS with `tls`.
fn client_on(port: u16, bearer: &str, tls: Arc<rustls::ClientConfig>, attempts: u32) -> Client {
    let endpoints = super::schedule::NODES
        .iter()
        .map(|n| format!("{n}:{port}"))
        .collect();
    let mut cfg = ClientConfig::new(endpoints, bearer)
        .with_tls((*tls).clone())
        .expect("tls");
    cfg.attempt_timeout = Duration::from_secs(2);
    cfg.attempts_max = attempts;
    Client::with_connector(
        cfg,
        kura_node::net::Net::turmoil().connector,
        kura_node::net::spawner(),
    )
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A short outcome for the trace.
fn outcome<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(Error::Api { status, code, .. }) => format!("{status} {code}"),
        Err(Error::Ambiguous(_)) => "in-doubt".into(),
        Err(Error::Unavailable { .. }) => "unavailable".into(),
        Err(e) => format!("error {e}"),
    }
}

fn payment_level(p: &Payment) -> Option<Level> {
    Level::payment(p.state.as_str(), p.captured_amount, p.refunded_amount)
}

/// One worker or the checker: a client id, its SDK client and the shared world.
struct Actor {
    id: u32,
    api: Client,
    world: World,
    rng: Rng,
}

impl Actor {
    fn record(&self, invoked_ms: u64, kind: EventKind) {
        let event = Event {
            client: self.id,
            invoked_ms,
            completed_ms: now_ms(),
            kind,
        };
        self.world.lock().events.push(event);
    }

    fn ack(&self, invoked_ms: u64, op: &str, object: &str, level: Level) {
        self.record(
            invoked_ms,
            EventKind::Ack {
                op: op.into(),
                object: object.into(),
                level,
            },
        );
    }

    fn read(&self, invoked_ms: u64, object: &str, level: Level, settled: bool) {
        self.record(
            invoked_ms,
            EventKind::Read {
                object: object.into(),
                level,
                settled,
            },
        );
    }

    fn trace(&self, line: String) {
        self.world.trace(format!("c{} {line}", self.id));
    }

    async fn tokenize(&mut self, n: u64, one_time: bool) -> Option<String> {
        let decline = self.rng.percent(10);
        let number = if decline {
            "4000000000000002"
        } else {
            "4242424242424242"
        };
        let member = (!one_time).then(|| format!("m{}-{n}", self.id));
        let card = CardIn::new(number, 1 + (n % 12) as u32, 2031);
        let req = match &member {
            Some(m) => TokenizeIn::card_on_file(card, m),
            None => TokenizeIn::one_time(card),
        };
        let t0 = now_ms();
        let r = self.api.tokenize(&req).await;
        let token = r.as_ref().ok().map(|t| t.token.clone());
        self.trace(format!(
            "tokenize {} {} -> {} {}",
            if one_time { "one_time" } else { "card_on_file" },
            n,
            outcome(&r),
            token.as_deref().unwrap_or("-")
        ));
        let token = token?;
        self.ack(t0, "tokenize", &token, Level::TOKEN_ACTIVE);
        self.world.lock().tokens.insert(
            token.clone(),
            super::TokenInfo {
                member,
                one_time,
                delete_asked: false,
            },
        );
        if !one_time {
            self.world.lock().card_on_file.push(token.clone());
        }
        Some(token)
    }

    async fn pay(&mut self, n: u64, token: &str, one_time: bool, attempt: &str) -> Option<Payment> {
        let order = format!("o{}-{n}{attempt}", self.id);
        let key = format!("k{}-{n}{attempt}", self.id);
        let capture = self.rng.percent(40);
        let amount = self.rng.range(100, 9_000);
        let req = AuthorizeIn {
            token: token.to_owned(),
            amount,
            currency: "JPY".into(),
            order_id: order.clone(),
            capture,
            three_d_secure: None,
        };
        self.world.lock().orders.push(order.clone());
        let t0 = now_ms();
        let r = self.api.authorize(&req, &key).await;
        self.trace(format!(
            "pay {order} with {token} -> {} {}",
            outcome(&r),
            r.as_ref().map_or("-", |p| p.state.as_str())
        ));
        let body = r.ok()?;
        let id = body.id.clone();
        if let Some(level) = payment_level(&body) {
            self.ack(t0, "pay", &id, level);
        }
        if one_time {
            self.ack(t0, "pay", token, Level::TOKEN_USED);
        }
        self.world.lock().payments.push(id);
        Some(body)
    }

    async fn change(&mut self, n: u64) {
        let Some(id) = self.world.lock().pick_payment(&mut self.rng) else {
            return;
        };
        let (op, amount) = match self.rng.range(0, 2) {
            0 => ("capture", None),
            1 => ("refund", Some(self.rng.range(1, 3_000))),
            _ => ("void", None),
        };
        let key = format!("k{}-{n}-{op}", self.id);
        let t0 = now_ms();
        let r = match op {
            "capture" => self.api.capture(&id, amount, &key).await,
            "refund" => self.api.refund(&id, amount, &key).await,
            _ => self.api.void(&id, &key).await,
        };
        self.trace(format!("{op} {id} -> {}", outcome(&r)));
        if let Some(level) = r.ok().and_then(|p| payment_level(&p)) {
            self.ack(t0, op, &id, level);
        }
    }

    async fn delete(&mut self) {
        let picked = {
            let mut w = self.world.lock();
            let own: Vec<String> = w
                .card_on_file
                .iter()
                .filter(|t| {
                    w.tokens[*t]
                        .member
                        .as_deref()
                        .is_some_and(|m| m.starts_with(&format!("m{}-", self.id)))
                })
                .cloned()
                .collect();
            if own.is_empty() {
                None
            } else {
                let t = own[(self.rng.next_u64() % own.len() as u64) as usize].clone();
                let info = w.tokens.get_mut(&t).expect("known token");
                info.delete_asked = true;
                Some((t, info.member.clone().expect("card on file")))
            }
        };
        let Some((token, member)) = picked else {
            return;
        };
        let t0 = now_ms();
        let r = self.api.delete_card(&member, &token).await;
        self.trace(format!("delete {token} -> {}", outcome(&r)));
        if r.is_ok() {
            self.ack(t0, "delete", &token, Level::TOKEN_GONE);
        }
    }

    /// Reads a token or a payment; `settled` reads are the final read-back.
    async fn read_token(&mut self, token: &str, settled: bool) {
        let t0 = now_ms();
        let r = self.api.get_token(token).await;
        let level = match &r {
            Ok(t) if t.used_at.is_some() => Some(Level::TOKEN_USED),
            Ok(_) => Some(Level::TOKEN_ACTIVE),
            Err(Error::Api { status: 404, .. }) => {
                let asked = self
                    .world
                    .lock()
                    .tokens
                    .get(token)
                    .is_some_and(|t| t.delete_asked);
                Some(if asked {
                    Level::TOKEN_GONE
                } else {
                    Level::TOKEN_MISSING
                })
            }
            Err(_) => None,
        };
        self.trace(format!("read {token} -> {} {level:?}", outcome(&r)));
        if let Some(level) = level {
            self.read(t0, token, level, settled);
        }
    }

    async fn read_payment(&mut self, id: &str, settled: bool) {
        let t0 = now_ms();
        let r = self.api.payment(id).await;
        let level = match &r {
            Ok(p) => payment_level(p),
            Err(Error::Api { status: 404, .. }) => Level::payment("pending", 0, 0),
            Err(_) => None,
        };
        self.trace(format!("read {id} -> {} {level:?}", outcome(&r)));
        if let Some(level) = level {
            self.read(t0, id, level, settled);
        }
    }

    async fn read_something(&mut self) {
        let pick = {
            let w = self.world.lock();
            let n_tok = w.tokens.len() as u64;
            let n_pay = w.payments.len() as u64;
            if n_tok + n_pay == 0 {
                None
            } else {
                let i = self.rng.next_u64() % (n_tok + n_pay);
                if i < n_tok {
                    w.tokens.keys().nth(i as usize).cloned().map(|t| (t, true))
                } else {
                    Some((w.payments[(i - n_tok) as usize].clone(), false))
                }
            }
        };
        match pick {
            Some((t, true)) => self.read_token(&t, false).await,
            Some((p, false)) => self.read_payment(&p, false).await,
            None => {}
        }
    }

    async fn one_op(&mut self, n: u64) {
        match self.rng.range(0, 99) {
            0..=29 => {
                self.tokenize(n, false).await;
            }
            30..=54 => {
                if let Some(tok) = self.tokenize(n, true).await {
                    let first = self.pay(n, &tok, true, "").await;
                    // Now and then, try to spend the same one-time token again.
                    if first.is_some() && self.rng.percent(25) {
                        self.pay(n, &tok, true, "-again").await;
                    }
                }
            }
            55..=59 => {
                let cof = {
                    let w = self.world.lock();
                    (!w.card_on_file.is_empty()).then(|| {
                        w.card_on_file[(self.rng.next_u64() % w.card_on_file.len() as u64) as usize]
                            .clone()
                    })
                };
                if let Some(tok) = cof {
                    self.pay(n, &tok, false, "-cof").await;
                }
            }
            60..=71 => self.change(n).await,
            72..=77 => self.delete().await,
            _ => self.read_something().await,
        }
    }
}

/// A workload client: runs operations until the driver stops the fault phase.
pub(super) async fn worker(
    id: u32,
    seed: u64,
    think_ms: (u64, u64),
    world: World,
) -> turmoil::Result {
    let key = loop {
        if let Some(k) = world.lock().secret_key.clone() {
            break k;
        }
        sleep_ms(20).await;
    };
    let mut a = Actor {
        id,
        api: client(&world, &key, 8),
        world,
        rng: Rng::new(seed).fork(100 + u64::from(id)),
    };
    let mut n = 0;
    while !a.world.lock().stop {
        n += 1;
        a.one_op(n).await;
        let pause = a.rng.range(think_ms.0, think_ms.1);
        sleep_ms(pause).await;
    }
    a.world.lock().workers_done += 1;
    Ok(())
}

/// The checker: forms the cluster and creates the merchant, then after healing writes
/// once (timing the recovery) and, once the replicas have converged, reads back every
/// token, payment and order any client touched.
pub(super) async fn checker(seed: u64, world: World) -> turmoil::Result {
    let admin = operator(&world, 40);
    let init = operator(&world, 40);
    let r = init.init().await;
    world.trace(format!("c0 init -> {}", outcome(&r)));
    let shop = CreateMerchantIn {
        merchant_id: "m1".into(),
        name: "Chaos Shop".into(),
        allowed_origins: Vec::new(),
        token_format: TokenFormat::Opaque,
        require_three_d_secure: false,
    };
    let m = admin.create_merchant(&shop).await?;
    let key = m
        .secret_key
        .ok_or("merchant creation returned no secret key")?;
    world.trace("c0 merchant m1 created".into());
    world.lock().secret_key = Some(key.clone());
    world.lock().ready_at_ms = Some(now_ms());

    let mut a = Actor {
        id: 0,
        api: client(&world, &key, 4),
        world: world.clone(),
        rng: Rng::new(seed).fork(99),
    };
    while !a.world.lock().stop {
        sleep_ms(20).await;
    }
    // The first write after healing.
    let mut n = 1_000_000;
    loop {
        if a.world.lock().give_up {
            break;
        }
        n += 1;
        if a.tokenize(n, false).await.is_some() {
            a.world.lock().first_write_at_ms = Some(now_ms());
            break;
        }
        sleep_ms(50).await;
    }
    loop {
        let settled = {
            let w = a.world.lock();
            w.converged_at_ms.is_some() || w.give_up
        };
        if settled {
            break;
        }
        sleep_ms(20).await;
    }
    // Read everything back, once.
    a.api = client(&a.world, &key, 40);
    let (tokens, payments, orders) = {
        let w = a.world.lock();
        (
            w.tokens.keys().cloned().collect::<Vec<_>>(),
            w.payments.clone(),
            w.orders.clone(),
        )
    };
    for t in &tokens {
        a.read_token(t, true).await;
    }
    for p in &payments {
        a.read_payment(p, true).await;
    }
    for o in &orders {
        let r = a.api.payment_by_order(o).await;
        let Ok(found) = r else {
            a.trace(format!("order {o} -> {}", outcome(&r)));
            continue;
        };
        if let Some(p) = found {
            let token = p.token.clone();
            let one_time = a
                .world
                .lock()
                .tokens
                .get(&token)
                .is_some_and(|t| t.one_time);
            let seen = PaymentSeen {
                payment_id: p.id,
                token,
                one_time,
                gateway_txn_id: p.gateway_txn_id,
                state: p.state.as_str().into(),
            };
            a.trace(format!("order {o} -> {} {}", seen.payment_id, seen.state));
            a.world.lock().payments_seen.push(seen);
        }
    }
    a.world.lock().done = true;
    Ok(())
}

/// The operator: replaces the machines the schedule names, one at a time, the way
/// `kura member replace` does (remove the old member, start the new machine empty, add
/// it as a learner, promote it once caught up), retrying every step until it holds.
/// Never forces anything. Stops when the run is done or gives up.
pub(super) async fn operator_actor(world: World, never_lead: Option<u64>) -> turmoil::Result {
    let admin = operator(&world, 4);
    loop {
        let next = {
            let mut w = world.lock();
            if w.done || w.give_up {
                return Ok(());
            }
            let next = w.replace_queue.pop_front();
            w.replacing = next.is_some();
            next
        };
        match next {
            Some(slot) => replace(&world, &admin, slot, never_lead == Some(slot)).await,
            None => sleep_ms(20).await,
        }
        world.lock().replacing = false;
    }
}

/// Where a replacement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Remove,
    NewMachine,
    Add,
    Promote,
}

/// Replaces the machine on host `slot`.
async fn replace(world: &World, admin: &Client, slot: u64, never_lead: bool) {
    let name = super::schedule::name(slot);
    let role = [Role::Main, Role::Dr, Role::Bk][(slot - 1) as usize];
    let record = |f: &dyn Fn(&mut super::Replacement)| {
        let mut w = world.lock();
        if let Some(r) = w.replacements.iter_mut().rev().find(|r| r.slot == slot) {
            f(r);
        }
    };
    let mut step = Step::Remove;
    let mut new_id = 0;
    loop {
        if world.lock().give_up {
            return;
        }
        let (what, r) = match step {
            Step::Remove => {
                let r = admin.remove_member(name, false).await;
                // Gone already: an earlier attempt took effect before its answer was lost.
                let done = r.is_ok() || api_code(&r) == Some("member_not_found");
                if done {
                    step = Step::NewMachine;
                    record(&|x| x.removed_ms = Some(now_ms()));
                }
                ("remove", outcome(&r))
            }
            Step::NewMachine => {
                new_id = {
                    let mut w = world.lock();
                    let id = w.next_id;
                    w.next_id += 1;
                    w.new_machine = Some((slot, id));
                    id
                };
                while world.lock().new_machine.is_some() {
                    sleep_ms(10).await;
                }
                record(&|x| x.new_id = new_id);
                step = Step::Add;
                continue;
            }
            Step::Add => {
                let m = AddMemberIn {
                    name: name.into(),
                    id: Some(new_id),
                    role,
                    api_addr: format!("{name}:{}", sim::API_PORT),
                    raft_addr: format!("{name}:{}", sim::RAFT_PORT),
                    admin_addr: format!("{name}:{}", sim::ADMIN_PORT),
                    never_lead,
                };
                let r = admin.add_member(&m).await;
                // The id and the name are this machine's alone: `member_exists` is an
                // earlier attempt that took effect.
                if r.is_ok() || api_code(&r) == Some("member_exists") {
                    step = Step::Promote;
                }
                ("add", outcome(&r))
            }
            Step::Promote => {
                let r = admin.promote_member(name).await;
                match &r {
                    Ok(m) if m.voter && m.id == new_id => {
                        record(&|x| x.promoted_ms = Some(now_ms()));
                        world.trace(format!("operator promote {name} (node {new_id}) -> ok"));
                        return;
                    }
                    // The add was lost after all: add again.
                    _ if api_code(&r) == Some("member_not_found") => step = Step::Add,
                    _ => {}
                }
                ("promote", outcome(&r))
            }
        };
        world.trace(format!("operator {what} {name} -> {r}"));
        if step != Step::Promote || r != "ok" {
            sleep_ms(200).await;
        }
    }
}

/// The stable code of an API error.
fn api_code<T>(r: &Result<T, Error>) -> Option<&str> {
    match r {
        Err(Error::Api { code, .. }) => Some(code.as_str()),
        _ => None,
    }
}

impl Shared {
    fn pick_payment(&self, rng: &mut Rng) -> Option<String> {
        (!self.payments.is_empty())
            .then(|| self.payments[(rng.next_u64() % self.payments.len() as u64) as usize].clone())
    }
}
