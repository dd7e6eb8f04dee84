//! Sections validated on their own: TLS (listener, trunks' client
//! certificates and outbound TLS), digest algorithms, dial plans, media.

use super::*;

/// The engine's thread and its overload signal.
pub(super) fn engine_threads(p: &mut Problems, raw: &RawSip) {
    if raw.io_threads > MAX_IO_THREADS {
        p.add(
            "sip.io_threads",
            format!("must be in 0..={MAX_IO_THREADS} (0 = one per core)"),
        );
    }
    if !(-20..=0).contains(&raw.engine_nice) {
        p.add(
            "sip.engine_nice",
            "must be in -20..=0 (0 = the process's own priority)",
        );
    }
    if raw.engine_realtime_priority > 99 {
        let why = "must be in 0..=99 (0 = the normal scheduler)";
        p.add("sip.engine_realtime_priority", why);
    }
    // Past T1 (500 ms) peers retransmit what the node has not read yet,
    // adding load just when there is too much.
    if !(10..=500).contains(&raw.overload_lag_milliseconds) {
        let why = "must be in 10..=500 (new calls are refused past this lag; past 500 ms peers retransmit first)";
        p.add("sip.overload_lag_milliseconds", why);
    }
}

/// The TLS listener's settings: all of them with `tls` in `transports`,
/// none without. The files must be readable now, so a typo fails
/// `check-config` and the start, not the first carrier's handshake.
pub(super) fn sip_tls(p: &mut Problems, raw: &RawSip, wanted: bool) -> Option<SipTls> {
    if !wanted {
        for (key, set) in [
            ("sip.tls_listen", !raw.tls_listen.is_empty()),
            ("sip.tls_cert_file", raw.tls_cert_file.is_some()),
            ("sip.tls_key_file", raw.tls_key_file.is_some()),
        ] {
            if set {
                p.add(key, "only with \"tls\" in sip.transports");
            }
        }
        return None;
    }
    let mut listen = Vec::new();
    if raw.tls_listen.is_empty() {
        p.add("sip.tls_listen", "needs at least one address for tls");
    }
    for (i, a) in raw.tls_listen.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(_) => p.add(
                format!("sip.tls_listen[{i}]"),
                format!("not an ADDR:PORT: {a:?}"),
            ),
        }
    }
    let cert = readable_file(p, "sip.tls_cert_file", raw.tls_cert_file.as_deref(), true);
    let key = readable_file(p, "sip.tls_key_file", raw.tls_key_file.as_deref(), true);
    Some(SipTls {
        listen,
        cert_file: cert?,
        key_file: key?,
    })
}

/// A trunk's mTLS identity: a CA and the names its certificate may carry,
/// both or neither, and only where a TLS listener can receive it.
pub(super) fn trunk_client_cert(
    p: &mut Problems,
    path: &str,
    t: &RawTrunk,
    listener: bool,
) -> Option<TrunkClientCert> {
    if t.tls_client_ca_file.is_none() && t.tls_peer_names.is_empty() {
        return None;
    }
    if !listener {
        p.add(
            format!("{path}.tls_peer_names"),
            "needs the TLS listener (\"tls\" in sip.transports)",
        );
    }
    if t.tls_peer_names.is_empty() {
        p.add(
            format!("{path}.tls_peer_names"),
            "needs at least one name with tls_client_ca_file",
        );
    }
    for (i, n) in t.tls_peer_names.iter().enumerate() {
        let valid = !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            p.add(
                format!("{path}.tls_peer_names[{i}]"),
                format!("not a DNS name: {n:?}"),
            );
        }
    }
    let ca = readable_file(
        p,
        &format!("{path}.tls_client_ca_file"),
        t.tls_client_ca_file.as_deref(),
        true,
    )?;
    Some(TrunkClientCert {
        ca_file: ca,
        peer_names: t
            .tls_peer_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
    })
}

/// How a trunk's outbound side is reached: UDP (the default) or TLS with
/// the name its certificate must carry. TLS needs our TLS listener: its
/// address is our Via and Contact, where the carrier reaches us back.
pub(super) fn trunk_outbound_tls(
    p: &mut Problems,
    path: &str,
    t: &RawTrunk,
    listener: bool,
) -> Option<OutboundTls> {
    let tls = match t.outbound_transport.as_deref() {
        None | Some("udp") => false,
        Some("tls") => true,
        Some(other) => {
            p.add(
                format!("{path}.outbound_transport"),
                format!("unknown transport {other:?} (udp, tls)"),
            );
            return None;
        }
    };
    if !tls {
        for (key, set) in [
            ("outbound_tls_name", t.outbound_tls_name.is_some()),
            ("outbound_tls_ca_file", t.outbound_tls_ca_file.is_some()),
            ("outbound_tls_cert_file", t.outbound_tls_cert_file.is_some()),
            ("outbound_tls_key_file", t.outbound_tls_key_file.is_some()),
        ] {
            if set {
                p.add(
                    format!("{path}.{key}"),
                    "only with outbound_transport = \"tls\"",
                );
            }
        }
        return None;
    }
    if t.outbound.is_none() {
        p.add(
            format!("{path}.outbound_transport"),
            "only for a trunk with outbound",
        );
    }
    if !listener {
        p.add(
            format!("{path}.outbound_transport"),
            "needs the TLS listener (\"tls\" in sip.transports): the carrier answers there",
        );
    }
    let name = match t.outbound_tls_name.as_deref() {
        Some(n)
            if !n.is_empty()
                && n.len() <= 253
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b)) =>
        {
            Some(n.to_ascii_lowercase())
        }
        Some(n) => {
            p.add(
                format!("{path}.outbound_tls_name"),
                format!("not a DNS name or IP address: {n:?}"),
            );
            None
        }
        None => {
            p.add(
                format!("{path}.outbound_tls_name"),
                "required with outbound_transport = \"tls\" (the name its certificate carries)",
            );
            None
        }
    };
    let ca = readable_file(
        p,
        &format!("{path}.outbound_tls_ca_file"),
        t.outbound_tls_ca_file.as_deref(),
        false,
    );
    let both = t.outbound_tls_cert_file.is_some() || t.outbound_tls_key_file.is_some();
    let cert = readable_file(
        p,
        &format!("{path}.outbound_tls_cert_file"),
        t.outbound_tls_cert_file.as_deref(),
        both,
    );
    let key = readable_file(
        p,
        &format!("{path}.outbound_tls_key_file"),
        t.outbound_tls_key_file.as_deref(),
        both,
    );
    Some(OutboundTls {
        name: name?,
        ca_file: ca,
        client_cert: cert.zip(key),
    })
}

/// A list of digest algorithm tokens, each known one once.
pub(super) fn digest_algorithms(p: &mut Problems, path: &str, list: &[String]) -> Vec<Algorithm> {
    let mut algs = Vec::new();
    for (i, a) in list.iter().enumerate() {
        let alg = match a.as_str() {
            "SHA-256" => Algorithm::Sha256,
            "MD5" => Algorithm::Md5,
            other => {
                p.add(
                    format!("{path}[{i}]"),
                    format!("unknown algorithm {other:?} (SHA-256, MD5)"),
                );
                continue;
            }
        };
        if algs.contains(&alg) {
            p.add(format!("{path}[{i}]"), format!("{a} listed twice"));
        } else {
            algs.push(alg);
        }
    }
    algs
}

/// A tenant's dial plan: the Italian one, with what the tenant changed.
pub(super) fn validate_dial_plan(
    p: &mut Problems,
    path: &str,
    raw: Option<&RawDialPlan>,
) -> DialPlan {
    let mut plan = DialPlan::italy();
    let Some(raw) = raw else {
        return plan;
    };
    if let Some(cc) = &raw.country_code {
        if (1..=3).contains(&cc.len())
            && cc.bytes().all(|b| b.is_ascii_digit())
            && !cc.starts_with('0')
        {
            plan.country_code = cc.clone();
        } else {
            p.add(
                format!("{path}.country_code"),
                "1 to 3 digits, not starting with 0 (Italy: \"39\")",
            );
        }
    }
    for (key, list, target) in [
        ("allow", &raw.allow, &mut plan.allow),
        ("block", &raw.block, &mut plan.block),
    ] {
        let Some(list) = list else {
            continue;
        };
        for (i, prefix) in list.iter().enumerate() {
            if !dialplan::valid_prefix(prefix) {
                p.add(
                    format!("{path}.{key}[{i}]"),
                    "an E.164 prefix: + and 1 to 15 digits (e.g. \"+393\")",
                );
            }
        }
        if key == "block" {
            // Added to the Italian blocks, never in their place: a firm
            // adding one prefix of its own had silently unblocked premium
            // and special numbers (and `+3900`, dialled abroad by a
            // carrier that reads `+39` back as national) for its trunks.
            for prefix in list {
                if !target.contains(prefix) {
                    target.push(prefix.clone());
                }
            }
        } else {
            target.clone_from(list);
        }
    }
    if plan.allow.is_empty() {
        p.add(
            format!("{path}.allow"),
            "allows nothing: callbacks and transfers could never be dialled",
        );
    }
    plan
}

pub(super) fn validate_media(p: &mut Problems, m: &RawMedia) -> MediaConfig {
    if m.port_min < 1024 || m.port_max < m.port_min || m.port_max - m.port_min < 3 {
        p.add(
            "media.port_min",
            "port_min..=port_max must lie above 1023 and hold at least two even/odd pairs",
        );
    }
    let advertise_address = m.advertise_address.as_ref().and_then(|a| match a.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            p.add(
                "media.advertise_address",
                format!("not an IP address: {a:?}"),
            );
            None
        }
    });
    let mut codecs = Vec::new();
    for (i, c) in m.codecs.iter().enumerate() {
        match c.to_ascii_uppercase().as_str() {
            "PCMU" if !codecs.contains(&0) => codecs.push(0),
            "PCMA" if !codecs.contains(&8) => codecs.push(8),
            "PCMU" | "PCMA" => p.add(format!("media.codecs[{i}]"), "listed twice"),
            _ => p.add(
                format!("media.codecs[{i}]"),
                format!("unsupported codec {c:?} (PCMU, PCMA)"),
            ),
        }
    }
    if m.codecs.is_empty() {
        p.add("media.codecs", "needs at least one of PCMU, PCMA");
    }
    let latch = match m.latch.as_str() {
        "symmetric" => LatchMode::Symmetric,
        "sdp_address" => LatchMode::SdpAddress,
        "first_packet" => LatchMode::FirstPacket,
        other => {
            p.add(
                "media.latch",
                format!("unknown latch mode {other:?} (symmetric, sdp_address, first_packet)"),
            );
            LatchMode::Symmetric
        }
    };
    if m.threads > 256 {
        p.add("media.threads", "at most 256 (0 = one per core)");
    }
    MediaConfig {
        ports: (m.port_min, m.port_max),
        advertise_address,
        codecs,
        latch,
        inactivity_timeout: (m.inactivity_timeout_seconds > 0)
            .then(|| Duration::from_secs(m.inactivity_timeout_seconds)),
        threads: m.threads,
        music_on_hold: m.music_on_hold.as_ref().map(PathBuf::from),
        sounds_dir: m
            .sounds_dir
            .as_ref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        prompts_dir: m
            .prompts_dir
            .as_ref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        recordings_dir: m
            .recordings_dir
            .as_ref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
    }
}

/// `[http]`'s TLS files and allowed origins.
pub(super) fn http_web(raw: &RawHttp, p: &mut Problems) -> HttpWeb {
    let tls = match (&raw.tls_cert_file, &raw.tls_key_file) {
        (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => {
            Some((PathBuf::from(c), PathBuf::from(k)))
        }
        (None, None) => None,
        _ => {
            p.add(
                "http.tls_cert_file",
                "HTTPS needs both tls_cert_file and tls_key_file (PEM files)",
            );
            None
        }
    };
    if raw.allowed_origins.len() > 64 {
        p.add("http.allowed_origins", "at most 64 origins");
    }
    for (i, o) in raw.allowed_origins.iter().enumerate() {
        let ok = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
            .is_some_and(|h| {
                !h.is_empty()
                    && h.len() <= 253
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    })
            });
        if !ok {
            p.add(
                format!("http.allowed_origins[{i}]"),
                "an origin: https://host[:port] (no path, no trailing slash)",
            );
        }
    }
    // Readable now, so `check-config` names a missing file rather than
    // the start (which also checks what is in it).
    let metrics_token_file = readable_file(
        p,
        "http.metrics_token_file",
        raw.metrics_token_file.as_deref(),
        false,
    );
    HttpWeb {
        tls,
        allowed_origins: raw.allowed_origins.clone(),
        metrics_token_file,
    }
}

/// Each tenant's supervisors' phones (by tenant index): SIP accounts of
/// the tenant's own operators, each once.
pub(super) fn supervisor_phones(
    p: &mut Problems,
    tenants: &[RawTenant],
    agents: &[Agent],
) -> Vec<Vec<String>> {
    let mut all = Vec::with_capacity(tenants.len());
    for (i, t) in tenants.iter().enumerate() {
        let mut mine: Vec<String> = Vec::new();
        for (j, user) in t.supervisor_phones.iter().enumerate() {
            let path = format!("tenants[{i}].supervisor_phones[{j}]");
            match agents.iter().find(|a| &a.username == user) {
                None => p.add(path, format!("{user:?} is not an operator's SIP account")),
                Some(a) if a.tenant.index() != i => {
                    p.add(path, format!("{user:?} belongs to another tenant"));
                }
                Some(_) if mine.contains(user) => p.add(path, "listed twice"),
                Some(_) => mine.push(user.clone()),
            }
        }
        all.push(mine);
    }
    all
}

/// Each tenant's transfer prefixes (by tenant index): `+` and digits.
pub(super) fn transfer_numbers(p: &mut Problems, tenants: &[RawTenant]) -> Vec<Vec<String>> {
    tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            for (j, n) in t.transfer_numbers.iter().enumerate() {
                if !dialplan::valid_prefix(n) {
                    p.add(
                        format!("tenants[{i}].transfer_numbers[{j}]"),
                        "an E.164 prefix: + and 1 to 15 digits",
                    );
                }
            }
            t.transfer_numbers.clone()
        })
        .collect()
}

/// The tenants' names, dial plans and digest algorithms (by tenant index).
pub(super) fn tenant_sections(
    p: &mut Problems,
    raw: &[RawTenant],
    algs: &[Algorithm],
) -> (Vec<String>, Vec<DialPlan>, Vec<Vec<Algorithm>>) {
    let mut tenants = Vec::new();
    let mut dial_plans = Vec::new();
    let mut tenant_algs = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        tenant_algs.push(match &t.digest_algorithms {
            None => algs.to_vec(),
            Some(list) => {
                let path = format!("tenants[{i}].digest_algorithms");
                let mine = digest_algorithms(p, &path, list);
                let usable: Vec<Algorithm> =
                    algs.iter().copied().filter(|a| mine.contains(a)).collect();
                if usable.is_empty() {
                    p.add(path, "none of them is in sip.digest_algorithms");
                }
                usable
            }
        });
        if !valid_name(&t.name) {
            p.add(
                format!("tenants[{i}].name"),
                "must be 1-64 of [A-Za-z0-9_-]",
            );
        }
        if tenants.contains(&t.name) {
            p.add(
                format!("tenants[{i}].name"),
                format!("duplicate tenant {:?}", t.name),
            );
        }
        tenants.push(t.name.clone());
        dial_plans.push(validate_dial_plan(
            p,
            &format!("tenants[{i}].dial_plan"),
            t.dial_plan.as_ref(),
        ));
    }
    (tenants, dial_plans, tenant_algs)
}

/// `[tracing]`: an `http://HOST[:PORT][/PATH]` OTLP endpoint (port 4318 by
/// default; the spans go to PATH/v1/traces) and a `service_name`. HTTPS
/// is refused: spans go to a collector agent beside the node, which
/// forwards them as the firm's network wants.
pub(super) fn tracing_section(p: &mut Problems, raw: &RawTracing) -> Option<Tracing> {
    let name_ok = (1..=64).contains(&raw.service_name.len())
        && raw
            .service_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        p.add(
            "tracing.service_name",
            "1 to 64 letters, digits, '.', '_' or '-'",
        );
    }
    let url = raw.otlp_endpoint.as_ref()?;
    const FORM: &str = "http://HOST[:PORT][/PATH] of an OpenTelemetry collector (OTLP/HTTP, port 4318 by default); https is not spoken: run a collector agent beside the node";
    let Some(rest) = url.strip_prefix("http://") else {
        p.add("tracing.otlp_endpoint", FORM);
        return None;
    };
    let (authority, base) = match rest.split_once('/') {
        Some((a, path)) => (a, format!("/{}", path.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            (h, Some(port))
        }
        _ => (authority, None),
    };
    let port = match port {
        None => Some(4318),
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0),
    };
    // An IPv6 address only in brackets: `::1:4318` cannot say where the
    // address ends.
    let bad_host = host.is_empty()
        || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']')))
        || host.contains(['[', ']']) && !(host.starts_with('[') && host.ends_with(']'));
    let (Some(port), false) = (
        port,
        bad_host || authority.contains('@') || !url.bytes().all(|b| b.is_ascii_graphic()),
    ) else {
        p.add("tracing.otlp_endpoint", FORM);
        return None;
    };
    name_ok.then(|| Tracing {
        addr: format!("{host}:{port}"),
        // HTTP/1.1's Host names the port unless it is 80.
        host: if port == 80 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        },
        path: format!("{base}/v1/traces"),
        service_name: raw.service_name.clone(),
    })
}
