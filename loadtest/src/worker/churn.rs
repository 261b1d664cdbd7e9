//! Churn: short-lived connections opened at a fixed rate alongside the main ones, each held for a
//! lifetime and then closed (close frame + FIN, or a reset with `abrupt`). Their users are their own
//! (`<prefix>c<worker>_<k>`), so the main connections' delivery accounting stays exact.

use std::{
    cell::RefCell,
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::{net::TcpStream, task::JoinHandle, time::sleep_until};

use super::{
    conn,
    state::{Worker, now_us},
};
use crate::{
    proto::{ChurnResult, ChurnSpec},
    stats::{
        failure::Failures,
        hist::{self, Hist},
        pacer::Pacer,
    },
    wire::frame::{self, opcode},
};

/// Churn counters of one worker.
struct Acc {
    attempted: u64,
    established: u64,
    closed: u64,
    failures: Failures,
    handshake: Hist,
}

/// Opens churning connections for `duration`, waits for the last to close, returns the counts.
pub async fn run(w: Rc<Worker>, spec: ChurnSpec, duration: Duration) -> ChurnResult {
    let acc = Rc::new(RefCell::new(Acc {
        attempted: 0,
        established: 0,
        closed: 0,
        failures: Failures::new(),
        handshake: hist::new_hist(3),
    }));
    let mut pacer = Pacer::new(spec.rate, 64);
    let start = Instant::now();
    let end_us = duration.as_micros() as u64;
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut k: u64 = 0;
    if spec.rate > 0.0 {
        loop {
            let el = start.elapsed().as_micros() as u64;
            if el >= end_us {
                break;
            }
            let n = pacer.due(el);
            for _ in 0..n {
                tasks.push(tokio::task::spawn_local(one(
                    w.clone(),
                    acc.clone(),
                    k,
                    spec,
                )));
                k += 1;
            }
            pacer.issue(n);
            tasks.retain(|t| !t.is_finished());
            let next = pacer.next_due_us().min(end_us);
            sleep_until((start + Duration::from_micros(next)).into()).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let a = acc.borrow();
    ChurnResult {
        attempted: a.attempted,
        established: a.established,
        closed: a.closed,
        failures: a.failures.clone(),
        handshake: hist::encode(&a.handshake),
    }
}

async fn one(w: Rc<Worker>, acc: Rc<RefCell<Acc>>, k: u64, spec: ChurnSpec) {
    let name = format!("{}c{}_{k}", w.plan.user_prefix, w.plan.worker);
    let target = format!("{}?token={}", w.plan.path, w.signer.token(&name));
    acc.borrow_mut().attempted += 1;
    w.churned.set(w.churned.get() + 1);
    let t0 = now_us();
    let opened = conn::open(&w, conn::churn_source(&w, k as usize), &target).await;
    let opened = opened.and_then(|o| Ok((TcpStream::from_std(o.sock)?, o.tls.is_some())));
    let (stream, tls) = match opened {
        Ok(s) => s,
        Err(e) => {
            *acc.borrow_mut().failures.entry(e.kind()).or_default() += 1;
            w.failed.set(w.failed.get() + 1);
            return;
        }
    };
    {
        let mut a = acc.borrow_mut();
        a.established += 1;
        hist::record(&mut a.handshake, now_us() - t0);
    }
    w.open.set(w.open.get() + 1);
    let lifetime = Duration::from_millis(spec.lifetime_ms);
    let _ = tokio::time::timeout(lifetime, discard(&stream)).await;
    if spec.abrupt {
        let _ = stream.set_zero_linger();
    } else if !tls {
        // A close frame and FIN (over TLS only the FIN: the close would have to be encrypted).
        let mut out = Vec::with_capacity(8);
        let mask = (w.rand_u128() as u32).to_be_bytes();
        frame::encode_masked(opcode::CLOSE, &1000u16.to_be_bytes(), mask, &mut out);
        let _ = stream.try_write(&out);
    }
    drop(stream);
    w.open.set(w.open.get().saturating_sub(1));
    acc.borrow_mut().closed += 1;
}

/// Reads and drops whatever the server sends until it closes.
async fn discard(stream: &TcpStream) {
    let mut buf = [0u8; 2048];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
