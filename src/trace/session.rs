//! Trace sessions on the control thread: each attached `uvs trace` / `uvs capture` gets a
//! slot in the workers' filters and a thread of its own that formats and writes, fed by
//! [`pump`] every control tick through a bounded queue. Nothing on the forwarding path waits:
//! a full queue drops the batch (counted).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::datapath::tap::{Record, TraceFilter, TraceHub};

/// What a streaming client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    /// One text line per decision (and ARP event).
    Trace,
    /// pcapng bytes.
    Capture,
}

/// Sent from the control thread to a session's thread.
pub enum Msg {
    Records(Vec<Record>),
    /// An event the control thread formatted itself (ARP).
    Line(String),
}

/// One attached `uvs trace` / `uvs capture`, as the control thread keeps it.
pub struct Session {
    pub slot: usize,
    pub mode: StreamMode,
    pub filter: TraceFilter,
    pub(super) tx: crossbeam_channel::Sender<Msg>,
    done: std::sync::Arc<AtomicBool>,
}

/// Batches of records queued per session before the control thread starts dropping them.
const SESSION_QUEUE: usize = 256;

/// Writes one chunk of the stream: u32 big-endian length, then the bytes.
fn write_chunk(w: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&(bytes.len() as u32).to_be_bytes())?;
    w.write_all(bytes)
}

/// Starts a session on `stream` (the request was read and authorised; the `Streaming` reply
/// has been written). The session's own thread formats and writes; the control thread feeds
/// it with [`pump`]. `Err` if every slot is taken.
pub fn start_session(
    hub: &std::sync::Arc<TraceHub>,
    mode: StreamMode,
    filter: TraceFilter,
    mut stream: std::os::unix::net::UnixStream,
    ifnames: Vec<String>,
) -> std::io::Result<Session> {
    let Some(slot) = hub.attach(&filter) else {
        return Err(std::io::Error::other(
            "every trace slot is in use (one trace and one capture at a time)",
        ));
    };
    let (tx, rx) = crossbeam_channel::bounded::<Msg>(SESSION_QUEUE);
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let done2 = std::sync::Arc::clone(&done);
    let hub2 = std::sync::Arc::clone(hub);
    let spawned = std::thread::Builder::new()
        .name("uvs-trace".into())
        .spawn(move || {
            let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(5)));
            let r = run_session(&hub2, mode, filter, &mut stream, &rx, &ifnames);
            if let Err(e) = r {
                log::debug!("trace session ended: {e}");
            }
            done2.store(true, Ordering::Release);
        });
    if let Err(e) = spawned {
        hub.detach(slot);
        return Err(e);
    }
    log::info!("trace session attached ({mode:?}, {filter:?})");
    Ok(Session {
        slot,
        mode,
        filter,
        tx,
        done,
    })
}

fn peer_gone(stream: &std::os::unix::net::UnixStream) -> bool {
    let mut b = [0u8; 1];
    let _ = stream.set_nonblocking(true);
    let gone = matches!(std::io::Read::read(&mut &*stream, &mut b), Ok(0));
    let _ = stream.set_nonblocking(false);
    gone
}

fn run_session(
    hub: &TraceHub,
    mode: StreamMode,
    filter: TraceFilter,
    stream: &mut std::os::unix::net::UnixStream,
    rx: &crossbeam_channel::Receiver<Msg>,
    ifnames: &[String],
) -> std::io::Result<()> {
    let name = |i: u16| {
        ifnames
            .get(usize::from(i))
            .cloned()
            .unwrap_or_else(|| format!("if{i}"))
    };
    let (full0, rate0) = (
        hub.dropped_full.load(Ordering::Relaxed) + hub.dropped_queue.load(Ordering::Relaxed),
        hub.dropped_rate.load(Ordering::Relaxed),
    );
    let mut lost_shown = (0, 0);
    match mode {
        StreamMode::Capture => write_chunk(stream, &super::capture::header(ifnames))?,
        StreamMode::Trace => write_chunk(
            stream,
            format!(
                "# uvs trace: {}; times UTC; oh = active*256+inactive (IPVS overhead)\n",
                describe(&filter)
            )
            .as_bytes(),
        )?,
    }
    let mut seen = 0u64;
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(250)) {
            Ok(Msg::Records(v)) => {
                let mut text = String::new();
                for r in &v {
                    match mode {
                        StreamMode::Trace => {
                            text.push_str(&super::text::format_record(r, &name));
                            text.push('\n');
                        }
                        StreamMode::Capture => {
                            write_chunk(stream, &super::capture::record_blocks(r, &name))?
                        }
                    }
                    seen += 1;
                    if filter.count != 0 && seen >= filter.count {
                        break;
                    }
                }
                if !text.is_empty() {
                    write_chunk(stream, text.as_bytes())?;
                }
                if filter.count != 0 && seen >= filter.count {
                    return Ok(());
                }
            }
            Ok(Msg::Line(l)) => {
                if mode == StreamMode::Trace {
                    write_chunk(stream, format!("{l}\n").as_bytes())?;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if peer_gone(stream) {
                    return Ok(());
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(()),
        }
        let lost = (
            hub.dropped_full.load(Ordering::Relaxed) + hub.dropped_queue.load(Ordering::Relaxed)
                - full0,
            hub.dropped_rate.load(Ordering::Relaxed) - rate0,
        );
        if mode == StreamMode::Trace && lost != lost_shown {
            write_chunk(
                stream,
                format!(
                    "# trace records lost since attach: {} (buffer full), {} (rate limit); packets are unaffected\n",
                    lost.0, lost.1
                )
                .as_bytes(),
            )?;
            lost_shown = lost;
        }
    }
}

fn describe(f: &TraceFilter) -> String {
    let mut parts = Vec::new();
    match (f.vip, f.port) {
        (Some(v), Some(p)) => parts.push(format!("service {v}:{p}")),
        (Some(v), None) => parts.push(format!("VIP {v}")),
        (None, Some(p)) => parts.push(format!("port {p}")),
        _ => {}
    }
    if let Some(c) = f.client {
        parts.push(format!("client {c}"));
    }
    if parts.is_empty() {
        "every decision".into()
    } else {
        parts.join(", ")
    }
}

/// Control thread, every tick: detaches finished sessions, drains the workers' rings and
/// hands each session its records. Never blocks: a session whose queue is full loses that
/// batch (counted as lost records).
pub fn pump(hub: &TraceHub, sessions: &mut Vec<Session>, buf: &mut Vec<Record>) {
    sessions.retain(|s| {
        let keep = !s.done.load(Ordering::Acquire);
        if !keep {
            hub.detach(s.slot);
            log::info!("trace session detached ({:?})", s.mode);
        }
        keep
    });
    buf.clear();
    hub.drain(buf);
    if buf.is_empty() {
        return;
    }
    // Workers' rings interleave: show decisions in time order.
    buf.sort_by_key(|r| r.time_ns);
    for s in sessions.iter() {
        let bit = 1u8 << s.slot;
        let mine: Vec<Record> = buf
            .iter()
            .filter(|r| r.sessions & bit != 0)
            .copied()
            .collect();
        let n = mine.len() as u64;
        if n > 0 && s.tx.try_send(Msg::Records(mine)).is_err() {
            hub.dropped_queue.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Lost trace/capture records by reason, for the metrics (`uvs_trace_records_dropped_total`):
/// a worker's ring was full, the per-worker rate limit, a session's queue was full.
pub fn dropped_by_reason(hub: &TraceHub) -> [(&'static str, u64); 3] {
    [
        ("ring_full", hub.dropped_full.load(Ordering::Relaxed)),
        ("rate_limit", hub.dropped_rate.load(Ordering::Relaxed)),
        (
            "session_queue_full",
            hub.dropped_queue.load(Ordering::Relaxed),
        ),
    ]
}
