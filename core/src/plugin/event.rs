//! What a plugin call tells the plugin. The session keeps its [`Context`]
//! (every fact a plugin may see); each instance keeps [`Told`], what it was
//! last told, and a call sends only the difference: a WIT `call` record of
//! what every call has (the stage, the client's port, the recipient), and
//! a list of `update`s, one for each fact that changed. Facts
//! that did not change since the instance's previous call — the connection
//! all session long, the sender at every recipient, the headers from data to
//! route — cost nothing: lowering them into the guest on every call (a trip
//! into the guest's allocator per string) was most of a call's cost.
//! The difference is taken from whatever the instance was told last, in
//! this session or an earlier one (a fact the new session lacks is told as
//! cleared), so an instance can move between sessions without being told
//! everything again.

use std::sync::Arc;

use super::wit;

/// A session's facts, as plugins see them.
#[derive(Debug, Clone)]
pub struct Context {
    pub stage: wit::Stage,
    /// Shared with what instances were told: a change goes through
    /// `Arc::make_mut`, which gives it a new allocation, so an instance
    /// compares pointers to know whether it is up to date (as for headers).
    pub connection: Arc<wit::Connection>,
    pub envelope: Envelope,
    /// At rcpt-to: the recipient being decided on, and its parameters.
    pub recipient: Option<String>,
    pub recipient_params: Vec<wit::Param>,
    /// Tags (name, value) and score symbols (name, score) set so far.
    pub tags: Vec<(String, String)>,
    pub symbols: Vec<(String, f64)>,
    /// At data and route: the message's size and its header section (see
    /// `header_section`). The session hands the same `Arc` to both stages
    /// when data changed no header, so instances are not told it again.
    pub size: u64,
    pub headers: Option<Arc<str>>,
}

#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// None before MAIL FROM; empty for the null sender.
    pub sender: Option<String>,
    pub sender_params: Vec<wit::Param>,
    /// Recipients accepted so far.
    pub recipients: Vec<String>,
}

impl Context {
    /// The facts of a new connection.
    pub fn new(connection: wit::Connection) -> Context {
        Context {
            stage: wit::Stage::Connect,
            connection: Arc::new(connection),
            envelope: Envelope::default(),
            recipient: None,
            recipient_params: Vec::new(),
            tags: Vec::new(),
            symbols: Vec::new(),
            size: 0,
            headers: None,
        }
    }
}

/// A message's header section as plugins are told it: every field up to
/// the empty line (CRLF line ends), bytes that are not UTF-8 replaced.
pub fn header_section(message: &[u8]) -> Arc<str> {
    let end = crate::policy::headers::header_block_end(message);
    Arc::from(crate::policy::headers::lossy(&message[..end]))
}

/// What one instance was told, as of its last call, whichever session it
/// served. A new instance was told nothing (its guest starts from an empty
/// context); a guest keeps its context from one session to the next.
#[derive(Debug, Default)]
pub struct Told {
    connection: Option<Arc<wit::Connection>>,
    sender: Option<String>,
    sender_params: Vec<wit::Param>,
    recipients: Vec<String>,
    tags: Vec<(String, String)>,
    symbols: Vec<(String, f64)>,
    headers: Option<Arc<str>>,
}

/// The change from `told` to `now` as (keep, items), or None when there is
/// none; `told` becomes `now`.
fn splice<T: PartialEq + Clone>(told: &mut Vec<T>, now: &[T]) -> Option<(u32, Vec<T>)> {
    let keep = told.iter().zip(now).take_while(|(a, b)| a == b).count();
    if keep == told.len() && keep == now.len() {
        return None;
    }
    let items = now[keep..].to_vec();
    told.truncate(keep);
    told.extend_from_slice(&items);
    // Lists a session builds are bounded by its limits (recipients, steps).
    Some((u32::try_from(keep).unwrap_or(u32::MAX), items))
}

/// Pushes each fact of `now` that differs from `told` (all of them when
/// nothing was told). The client's port is not one: every call carries it.
fn connection_facts(told: Option<&wit::Connection>, now: &wit::Connection, out: &mut Vec<wit::Update>) {
    use wit::ConnectionFact as F;
    macro_rules! fact {
        ($field:ident, $variant:ident) => {
            if told.is_none_or(|t| t.$field != now.$field) {
                out.push(wit::Update::Connection(F::$variant(now.$field.clone())));
            }
        };
    }
    fact!(remote_ip, RemoteIp);
    fact!(local_addr, LocalAddr);
    fact!(listener, Listener);
    fact!(tls_version, TlsVersion);
    fact!(tls_cipher, TlsCipher);
    fact!(reverse_dns, ReverseDns);
    fact!(helo, Helo);
    fact!(auth_user, AuthUser);
}

impl Told {
    /// The call that brings the instance from what it was told to `ctx`:
    /// its `call` record, returned, and the facts that differ, pushed onto
    /// `updates`; `ctx` is remembered as told. `new_session` only tells
    /// the guest to forget its own per-session state: the facts are a
    /// difference all the same. The caller fills in `call.session`.
    pub fn call(&mut self, ctx: &Context, new_session: bool, config_id: u32, updates: &mut Vec<wit::Update>) -> wit::Call {
        match &self.connection {
            Some(told) if Arc::ptr_eq(told, &ctx.connection) => {}
            told => {
                connection_facts(told.as_deref(), &ctx.connection, updates);
                self.connection = Some(ctx.connection.clone());
            }
        }
        let env = &ctx.envelope;
        if self.sender != env.sender || self.sender_params != env.sender_params {
            self.sender.clone_from(&env.sender);
            self.sender_params.clone_from(&env.sender_params);
            updates.push(wit::Update::MailFrom(wit::MailFrom { address: env.sender.clone(), params: env.sender_params.clone() }));
        }
        if let Some((keep, items)) = splice(&mut self.recipients, &env.recipients) {
            updates.push(wit::Update::Recipients(wit::RecipientsChange { keep, items }));
        }
        if let Some((keep, items)) = splice(&mut self.tags, &ctx.tags) {
            updates.push(wit::Update::Tags(wit::TagsChange { keep, items }));
        }
        if let Some((keep, items)) = splice(&mut self.symbols, &ctx.symbols) {
            updates.push(wit::Update::Symbols(wit::SymbolsChange { keep, items }));
        }
        let headers_changed = match (&self.headers, &ctx.headers) {
            (None, None) => false,
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            _ => true,
        };
        if headers_changed {
            // Holding the Arc keeps ptr_eq honest: the allocation cannot be
            // reused for other headers while it is remembered here.
            self.headers.clone_from(&ctx.headers);
            updates.push(wit::Update::Headers(ctx.headers.as_deref().unwrap_or_default().to_string()));
        }
        if !ctx.recipient_params.is_empty() {
            updates.push(wit::Update::RecipientParams(ctx.recipient_params.clone()));
        }
        wit::Call {
            stage: ctx.stage,
            // The instance's own bookkeeping, which it fills in.
            session: 0,
            new_session,
            remote_port: ctx.connection.remote_port,
            recipient: ctx.recipient.clone(),
            size: ctx.size,
            config_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> wit::Connection {
        wit::Connection {
            remote_ip: "192.0.2.1".into(),
            remote_port: 4000,
            local_addr: "127.0.0.1:25".into(),
            listener: "mx".into(),
            tls_version: None,
            tls_cipher: None,
            reverse_dns: None,
            helo: None,
            auth_user: None,
        }
    }

    /// The guest's side: what the SDK does with a call and its updates.
    #[derive(Default, Debug, PartialEq)]
    struct Guest {
        connection: Option<wit::Connection>,
        sender: Option<String>,
        recipients: Vec<String>,
        tags: Vec<(String, String)>,
        symbols: Vec<(String, f64)>,
        headers: String,
    }

    /// What one call sent: its record and its updates.
    struct Sent {
        call: wit::Call,
        updates: Vec<wit::Update>,
    }

    fn send(told: &mut Told, ctx: &Context, new_session: bool) -> Sent {
        let mut updates = Vec::new();
        let call = told.call(ctx, new_session, 0, &mut updates);
        Sent { call, updates }
    }

    impl Sent {
        fn connection(&self) -> Vec<wit::ConnectionFact> {
            self.updates.iter().filter_map(|u| if let wit::Update::Connection(f) = u { Some(f.clone()) } else { None }).collect()
        }
        fn mail_from(&self) -> Option<&wit::MailFrom> {
            self.updates.iter().find_map(|u| if let wit::Update::MailFrom(m) = u { Some(m) } else { None })
        }
        fn recipients(&self) -> Option<(u32, usize)> {
            self.updates.iter().find_map(|u| if let wit::Update::Recipients(r) = u { Some((r.keep, r.items.len())) } else { None })
        }
        fn tags(&self) -> Option<(u32, usize)> {
            self.updates.iter().find_map(|u| if let wit::Update::Tags(t) = u { Some((t.keep, t.items.len())) } else { None })
        }
        fn symbols(&self) -> Option<(u32, usize)> {
            self.updates.iter().find_map(|u| if let wit::Update::Symbols(s) = u { Some((s.keep, s.items.len())) } else { None })
        }
        fn headers(&self) -> Option<&str> {
            self.updates.iter().find_map(|u| if let wit::Update::Headers(h) = u { Some(h.as_str()) } else { None })
        }
        fn recipient_params(&self) -> Option<usize> {
            self.updates.iter().find_map(|u| if let wit::Update::RecipientParams(p) = u { Some(p.len()) } else { None })
        }
    }

    impl Guest {
        /// As the SDK does: a new session does not reset the context.
        fn apply(&mut self, sent: Sent) {
            let c = self.connection.get_or_insert_with(|| wit::Connection {
                remote_ip: String::new(),
                remote_port: 0,
                local_addr: String::new(),
                listener: String::new(),
                tls_version: None,
                tls_cipher: None,
                reverse_dns: None,
                helo: None,
                auth_user: None,
            });
            c.remote_port = sent.call.remote_port;
            for u in sent.updates {
                match u {
                    wit::Update::Connection(f) => match f {
                        wit::ConnectionFact::RemoteIp(v) => c.remote_ip = v,
                        wit::ConnectionFact::LocalAddr(v) => c.local_addr = v,
                        wit::ConnectionFact::Listener(v) => c.listener = v,
                        wit::ConnectionFact::TlsVersion(v) => c.tls_version = v,
                        wit::ConnectionFact::TlsCipher(v) => c.tls_cipher = v,
                        wit::ConnectionFact::ReverseDns(v) => c.reverse_dns = v,
                        wit::ConnectionFact::Helo(v) => c.helo = v,
                        wit::ConnectionFact::AuthUser(v) => c.auth_user = v,
                    },
                    wit::Update::MailFrom(m) => self.sender = m.address,
                    wit::Update::Recipients(r) => {
                        self.recipients.truncate(r.keep as usize);
                        self.recipients.extend(r.items);
                    }
                    wit::Update::Tags(t) => {
                        self.tags.truncate(t.keep as usize);
                        self.tags.extend(t.items);
                    }
                    wit::Update::Symbols(s) => {
                        self.symbols.truncate(s.keep as usize);
                        self.symbols.extend(s.items);
                    }
                    wit::Update::Headers(h) => self.headers = h,
                    wit::Update::RecipientParams(_) | wit::Update::Ended(_) => {}
                }
            }
        }
        fn sees(&self, ctx: &Context) -> bool {
            self.connection.as_ref() == Some(&*ctx.connection)
                && self.sender == ctx.envelope.sender
                && self.recipients == ctx.envelope.recipients
                && self.tags == ctx.tags
                && self.symbols == ctx.symbols
                && self.headers == ctx.headers.as_deref().unwrap_or_default()
        }
    }

    #[test]
    fn only_changes_are_told_and_the_guest_always_sees_the_whole_context() {
        let mut told = Told::default();
        let mut guest = Guest::default();
        let mut ctx = Context::new(conn());
        let e = send(&mut told, &ctx, true);
        assert_eq!(e.connection().len(), 8, "the first call tells every connection fact");
        assert_eq!(e.call.remote_port, 4000, "the port comes with every call");
        guest.apply(e);
        assert!(guest.sees(&ctx));

        ctx.envelope.sender = Some("a@example.org".into());
        let e = send(&mut told, &ctx, false);
        assert_eq!(e.updates.len(), 1, "only the sender: an unchanged connection is not told again, and empty lists are not placed in the guest");
        assert_eq!(e.mail_from().and_then(|m| m.address.as_deref()), Some("a@example.org"));
        guest.apply(e);

        // HELO: that one fact.
        Arc::make_mut(&mut ctx.connection).helo = Some("client.example".into());
        let e = send(&mut told, &ctx, false);
        assert_eq!(e.updates, vec![wit::Update::Connection(wit::ConnectionFact::Helo(Some("client.example".into())))], "that fact alone: the sender was told already");
        guest.apply(e);
        assert!(guest.sees(&ctx));

        for r in ["b@example.org", "c@example.org"] {
            ctx.envelope.recipients.push(r.into());
            let e = send(&mut told, &ctx, false);
            assert!(e.mail_from().is_none());
            let (keep, n) = e.recipients().expect("a new recipient is told");
            assert_eq!((keep as usize, n), (ctx.envelope.recipients.len() - 1, 1), "only the new one");
            guest.apply(e);
            assert!(guest.sees(&ctx));
        }
        // A recipient's parameters, when it has some, come with it.
        ctx.recipient = Some("c@example.org".into());
        ctx.recipient_params = vec![wit::Param { name: "NOTIFY".into(), value: Some("NEVER".into()) }];
        let e = send(&mut told, &ctx, false);
        assert_eq!(e.recipient_params(), Some(1));
        assert_eq!(e.call.recipient.as_deref(), Some("c@example.org"));
        ctx.recipient = None;
        ctx.recipient_params.clear();

        // A plugin's rewrite in the middle of the list: told from there on.
        ctx.envelope.recipients[0] = "z@example.org".into();
        ctx.tags.push(("client".into(), "x".into()));
        ctx.symbols.push(("DNSBL".into(), 2.5));
        ctx.headers = Some(header_section(b"Subject: hi\r\n\r\nbody\r\n"));
        assert_eq!(ctx.headers.as_deref(), Some("Subject: hi\r\n"));
        let e = send(&mut told, &ctx, false);
        assert_eq!(e.recipients().map(|r| r.0), Some(0));
        guest.apply(e);
        assert!(guest.sees(&ctx));

        // The same headers at route: not told again. New ones: told.
        let e = send(&mut told, &ctx, false);
        assert!(e.updates.is_empty(), "nothing changed: no list at all");
        guest.apply(e);
        ctx.headers = Some(header_section(b"Subject: hi\r\n\r\n"));
        let e = send(&mut told, &ctx, false);
        assert!(e.headers().is_some());
        guest.apply(e);
        assert!(guest.sees(&ctx));

        // A tag replaced by key moves to the end: the list is told from the change.
        ctx.tags.insert(0, ("first".into(), "1".into()));
        let e = send(&mut told, &ctx, false);
        assert_eq!(e.tags(), Some((0, 2)));
        guest.apply(e);
        assert!(guest.sees(&ctx));

        // The transaction ends: no sender, no recipients, no message.
        ctx.envelope = Envelope::default();
        ctx.headers = None;
        let e = send(&mut told, &ctx, false);
        assert_eq!(e.headers(), Some(""), "the old headers are taken back");
        guest.apply(e);
        assert!(guest.sees(&ctx));
    }

    #[test]
    fn an_instance_moving_to_another_session_is_told_the_difference_and_sees_only_the_new_session() {
        let mut told = Told::default();
        let mut guest = Guest::default();
        // Session A, in the middle of a message.
        let mut a = Context::new(conn());
        a.envelope.sender = Some("a@example.org".into());
        a.envelope.recipients.push("b@example.org".into());
        a.tags.push(("t".into(), "v".into()));
        a.symbols.push(("S".into(), 1.0));
        a.headers = Some(header_section(b"Subject: a\r\n\r\n"));
        guest.apply(send(&mut told, &a, true));
        assert!(guest.sees(&a));
        // Session B, another client, before MAIL FROM: everything A had
        // and B has not is told as cleared.
        let mut b = Context::new(wit::Connection { remote_ip: "198.51.100.7".into(), remote_port: 5000, ..conn() });
        let e = send(&mut told, &b, true);
        // Only the facts that differ: the address (the port comes with
        // every call), not the listener or the local address.
        assert!(e.call.new_session);
        assert_eq!(e.call.remote_port, 5000);
        assert_eq!(e.connection(), vec![wit::ConnectionFact::RemoteIp("198.51.100.7".into())]);
        assert_eq!(e.mail_from().map(|m| m.address.clone()), Some(None), "A's sender is taken back");
        assert_eq!(e.recipients(), Some((0, 0)));
        assert_eq!(e.tags(), Some((0, 0)));
        assert_eq!(e.symbols(), Some((0, 0)));
        assert_eq!(e.headers(), Some(""));
        guest.apply(e);
        assert!(guest.sees(&b), "the guest holds B's facts and nothing of A's");
        // B's own next call: only what changed.
        b.envelope.sender = Some("c@example.org".into());
        let e = send(&mut told, &b, false);
        assert_eq!(e.updates.len(), 1, "the sender alone");
        guest.apply(e);
        assert!(guest.sees(&b));
        // Facts two sessions share (the same sender) are not told again.
        let mut c = Context::new(conn());
        c.envelope.sender = Some("c@example.org".into());
        let e = send(&mut told, &c, true);
        assert_eq!(e.connection().len(), 1, "back to A's address");
        assert_eq!(e.call.remote_port, 4000);
        assert!(e.mail_from().is_none());
        guest.apply(e);
        assert!(guest.sees(&c));
    }
}
