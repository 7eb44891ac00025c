//! What a plugin call tells the plugin. The session keeps its [`Context`]
//! (every fact a plugin may see); each instance keeps [`Told`], what it was
//! last told, and a call sends only the difference as a WIT `event`. Facts
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

/// None for an empty list: the host places every list it tells, even an
/// empty one, through a call into the guest's allocator.
pub fn none_if_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// The facts of `now` that differ from `told` (all of them when nothing
/// was told).
fn connection_facts(told: Option<&wit::Connection>, now: &wit::Connection) -> Vec<wit::ConnectionFact> {
    use wit::ConnectionFact as F;
    let mut out = Vec::new();
    macro_rules! fact {
        ($field:ident, $variant:ident) => {
            if told.is_none_or(|t| t.$field != now.$field) {
                out.push(F::$variant(now.$field.clone()));
            }
        };
    }
    fact!(remote_ip, RemoteIp);
    fact!(remote_port, RemotePort);
    fact!(local_addr, LocalAddr);
    fact!(listener, Listener);
    fact!(tls_version, TlsVersion);
    fact!(tls_cipher, TlsCipher);
    fact!(reverse_dns, ReverseDns);
    fact!(helo, Helo);
    fact!(auth_user, AuthUser);
    out
}

impl Told {
    /// The event that brings the instance from what it was told to `ctx`,
    /// and remembers `ctx` as told. `new_session` only tells the guest to
    /// forget its own per-session state: the facts are a difference all
    /// the same.
    pub fn event(&mut self, ctx: &Context, new_session: bool, config_id: u32) -> wit::Event {
        let connection = match &self.connection {
            Some(told) if Arc::ptr_eq(told, &ctx.connection) => None,
            told => {
                let facts = connection_facts(told.as_deref(), &ctx.connection);
                self.connection = Some(ctx.connection.clone());
                none_if_empty(facts)
            }
        };
        let env = &ctx.envelope;
        let mail_from = (self.sender != env.sender || self.sender_params != env.sender_params).then(|| {
            self.sender.clone_from(&env.sender);
            self.sender_params.clone_from(&env.sender_params);
            wit::MailFrom {
                address: env.sender.clone(),
                params: env.sender_params.clone(),
            }
        });
        let recipients = splice(&mut self.recipients, &env.recipients).map(|(keep, items)| wit::RecipientsChange { keep, items });
        let tags = splice(&mut self.tags, &ctx.tags).map(|(keep, items)| wit::TagsChange { keep, items });
        let symbols = splice(&mut self.symbols, &ctx.symbols).map(|(keep, items)| wit::SymbolsChange { keep, items });
        let headers_changed = match (&self.headers, &ctx.headers) {
            (None, None) => false,
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            _ => true,
        };
        let headers = headers_changed.then(|| {
            // Holding the Arc keeps ptr_eq honest: the allocation cannot be
            // reused for other headers while it is remembered here.
            self.headers.clone_from(&ctx.headers);
            ctx.headers.as_deref().unwrap_or_default().to_string()
        });
        wit::Event {
            stage: ctx.stage,
            // The instance's own bookkeeping, which it fills in.
            session: 0,
            ended: None,
            new_session,
            connection,
            mail_from,
            recipients,
            recipient: ctx.recipient.clone(),
            recipient_params: none_if_empty(ctx.recipient_params.clone()),
            tags,
            symbols,
            size: ctx.size,
            headers,
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

    /// The guest's side: what the SDK does with an event.
    #[derive(Default, Debug, PartialEq)]
    struct Guest {
        connection: Option<wit::Connection>,
        sender: Option<String>,
        recipients: Vec<String>,
        tags: Vec<(String, String)>,
        symbols: Vec<(String, f64)>,
        headers: String,
    }

    impl Guest {
        /// As the SDK does: a new session does not reset the context.
        fn apply(&mut self, e: wit::Event) {
            if let Some(facts) = e.connection {
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
                for f in facts {
                    match f {
                        wit::ConnectionFact::RemoteIp(v) => c.remote_ip = v,
                        wit::ConnectionFact::RemotePort(v) => c.remote_port = v,
                        wit::ConnectionFact::LocalAddr(v) => c.local_addr = v,
                        wit::ConnectionFact::Listener(v) => c.listener = v,
                        wit::ConnectionFact::TlsVersion(v) => c.tls_version = v,
                        wit::ConnectionFact::TlsCipher(v) => c.tls_cipher = v,
                        wit::ConnectionFact::ReverseDns(v) => c.reverse_dns = v,
                        wit::ConnectionFact::Helo(v) => c.helo = v,
                        wit::ConnectionFact::AuthUser(v) => c.auth_user = v,
                    }
                }
            }
            if let Some(m) = e.mail_from {
                self.sender = m.address;
            }
            if let Some(r) = e.recipients {
                self.recipients.truncate(r.keep as usize);
                self.recipients.extend(r.items);
            }
            if let Some(t) = e.tags {
                self.tags.truncate(t.keep as usize);
                self.tags.extend(t.items);
            }
            if let Some(s) = e.symbols {
                self.symbols.truncate(s.keep as usize);
                self.symbols.extend(s.items);
            }
            if let Some(h) = e.headers {
                self.headers = h;
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
        let e = told.event(&ctx, true, 0);
        assert_eq!(e.connection.as_ref().map(Vec::len), Some(9), "the first call tells every connection fact");
        guest.apply(e);
        assert!(guest.sees(&ctx));

        ctx.envelope.sender = Some("a@example.org".into());
        let e = told.event(&ctx, false, 0);
        assert!(e.connection.is_none(), "an unchanged connection is not told again, not even as an empty list");
        assert!(e.ended.is_none() && e.recipient_params.is_none(), "empty lists are not placed in the guest");
        assert_eq!(e.mail_from.as_ref().and_then(|m| m.address.as_deref()), Some("a@example.org"));
        guest.apply(e);

        // HELO: that one fact.
        Arc::make_mut(&mut ctx.connection).helo = Some("client.example".into());
        let e = told.event(&ctx, false, 0);
        assert_eq!(e.connection, Some(vec![wit::ConnectionFact::Helo(Some("client.example".into()))]));
        assert!(e.mail_from.is_none(), "the sender was told already");
        guest.apply(e);
        assert!(guest.sees(&ctx));

        for r in ["b@example.org", "c@example.org"] {
            ctx.envelope.recipients.push(r.into());
            let e = told.event(&ctx, false, 0);
            assert!(e.mail_from.is_none());
            let change = e.recipients.clone().expect("a new recipient is told");
            assert_eq!((change.keep as usize, change.items.len()), (ctx.envelope.recipients.len() - 1, 1), "only the new one");
            guest.apply(e);
            assert!(guest.sees(&ctx));
        }
        // A recipient's parameters, when it has some, come with it.
        ctx.recipient = Some("c@example.org".into());
        ctx.recipient_params = vec![wit::Param { name: "NOTIFY".into(), value: Some("NEVER".into()) }];
        let e = told.event(&ctx, false, 0);
        assert_eq!(e.recipient_params.as_deref().map(<[_]>::len), Some(1));
        ctx.recipient = None;
        ctx.recipient_params.clear();

        // A plugin's rewrite in the middle of the list: told from there on.
        ctx.envelope.recipients[0] = "z@example.org".into();
        ctx.tags.push(("client".into(), "x".into()));
        ctx.symbols.push(("DNSBL".into(), 2.5));
        ctx.headers = Some(header_section(b"Subject: hi\r\n\r\nbody\r\n"));
        assert_eq!(ctx.headers.as_deref(), Some("Subject: hi\r\n"));
        let e = told.event(&ctx, false, 0);
        assert_eq!(e.recipients.as_ref().map(|r| r.keep), Some(0));
        guest.apply(e);
        assert!(guest.sees(&ctx));

        // The same headers at route: not told again. New ones: told.
        let e = told.event(&ctx, false, 0);
        assert!(e.headers.is_none() && e.tags.is_none() && e.symbols.is_none() && e.recipients.is_none());
        guest.apply(e);
        ctx.headers = Some(header_section(b"Subject: hi\r\n\r\n"));
        let e = told.event(&ctx, false, 0);
        assert!(e.headers.is_some());
        guest.apply(e);
        assert!(guest.sees(&ctx));

        // A tag replaced by key moves to the end: the list is told from the change.
        ctx.tags.insert(0, ("first".into(), "1".into()));
        let e = told.event(&ctx, false, 0);
        assert_eq!(e.tags.as_ref().map(|t| (t.keep, t.items.len())), Some((0, 2)));
        guest.apply(e);
        assert!(guest.sees(&ctx));

        // The transaction ends: no sender, no recipients, no message.
        ctx.envelope = Envelope::default();
        ctx.headers = None;
        let e = told.event(&ctx, false, 0);
        assert_eq!(e.headers.as_deref(), Some(""), "the old headers are taken back");
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
        guest.apply(told.event(&a, true, 0));
        assert!(guest.sees(&a));
        // Session B, another client, before MAIL FROM: everything A had
        // and B has not is told as cleared.
        let mut b = Context::new(wit::Connection { remote_ip: "198.51.100.7".into(), remote_port: 5000, ..conn() });
        let e = told.event(&b, true, 0);
        // Only the facts that differ: the address and port, not the
        // listener or the local address.
        assert!(e.new_session);
        assert_eq!(e.connection, Some(vec![wit::ConnectionFact::RemoteIp("198.51.100.7".into()), wit::ConnectionFact::RemotePort(5000)]));
        assert_eq!(e.mail_from.as_ref().map(|m| m.address.clone()), Some(None), "A's sender is taken back");
        assert_eq!(e.recipients.as_ref().map(|r| (r.keep, r.items.len())), Some((0, 0)));
        assert_eq!(e.tags.as_ref().map(|t| (t.keep, t.items.len())), Some((0, 0)));
        assert_eq!(e.symbols.as_ref().map(|s| (s.keep, s.items.len())), Some((0, 0)));
        assert_eq!(e.headers.as_deref(), Some(""));
        guest.apply(e);
        assert!(guest.sees(&b), "the guest holds B's facts and nothing of A's");
        // B's own next call: only what changed.
        b.envelope.sender = Some("c@example.org".into());
        let e = told.event(&b, false, 0);
        assert!(e.connection.is_none() && e.recipients.is_none() && e.tags.is_none() && e.headers.is_none());
        guest.apply(e);
        assert!(guest.sees(&b));
        // Facts two sessions share (the same sender) are not told again.
        let mut c = Context::new(conn());
        c.envelope.sender = Some("c@example.org".into());
        let e = told.event(&c, true, 0);
        assert_eq!(e.connection.as_ref().map(Vec::len), Some(2), "back to A's address and port");
        assert!(e.mail_from.is_none());
        guest.apply(e);
        assert!(guest.sees(&c));
    }
}
