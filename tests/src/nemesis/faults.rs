//! The nemesis: faults drawn from the seed, one at a time, each held for a
//! while and then healed, recorded with when they were in force.

use std::fmt;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::cluster::{Cluster, SIZE};
use super::history::{Clock, FaultSpan, Shared, record};
use crate::receiver::Behavior;

/// How a link fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Connections closed, new ones refused.
    Cut,
    /// Connections kept open, nothing forwarded.
    Blackhole,
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillReplica(usize),
    /// SIGSTOP, then SIGCONT: a pause longer than two heartbeats.
    PauseReplica(usize),
    /// Postgres stopped for the hold, then started.
    PostgresDown,
    /// Postgres stopped and started at once.
    PostgresRestart,
    /// Replica i cannot reach Postgres.
    ReplicaFromDatabase(usize, Partition),
    /// Sidecar s cannot reach replica r.
    SidecarFromReplica(usize, usize, Partition),
    KillSidecar(usize),
    /// Every endpoint answers 500.
    ReceiverFailing,
    /// Every endpoint hangs past the delivery timeout.
    ReceiverHanging,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillReplica(i) => write!(f, "kill replica {i}"),
            Fault::PauseReplica(i) => write!(f, "pause replica {i}"),
            Fault::PostgresDown => write!(f, "postgres down"),
            Fault::PostgresRestart => write!(f, "postgres restart"),
            Fault::ReplicaFromDatabase(i, p) => write!(f, "{p:?} replica {i} from postgres"),
            Fault::SidecarFromReplica(s, r, p) => write!(f, "{p:?} sidecar {s} from replica {r}"),
            Fault::KillSidecar(s) => write!(f, "kill sidecar {s}"),
            Fault::ReceiverFailing => write!(f, "receiver answers 500"),
            Fault::ReceiverHanging => write!(f, "receiver hangs"),
        }
    }
}

impl Fault {
    /// The fault's kind, for counting.
    pub fn kind(self) -> &'static str {
        match self {
            Fault::KillReplica(_) => "SIGKILL a replica",
            Fault::PauseReplica(_) => "SIGSTOP a replica",
            Fault::PostgresDown => "Postgres down",
            Fault::PostgresRestart => "Postgres restart",
            Fault::ReplicaFromDatabase(_, Partition::Cut) => "cut a replica from Postgres",
            Fault::ReplicaFromDatabase(_, Partition::Blackhole) => "black-hole a replica from Postgres",
            Fault::SidecarFromReplica(_, _, Partition::Cut) => "cut a sidecar from a replica",
            Fault::SidecarFromReplica(_, _, Partition::Blackhole) => "black-hole a sidecar from a replica",
            Fault::KillSidecar(_) => "SIGKILL a sidecar",
            Fault::ReceiverFailing => "receiver answers 500",
            Fault::ReceiverHanging => "receiver hangs",
        }
    }

    /// A fault drawn at random.
    fn draw(rng: &mut StdRng) -> Self {
        let node = rng.random_range(0..SIZE);
        let partition = if rng.random_bool(0.5) { Partition::Cut } else { Partition::Blackhole };
        match rng.random_range(0..9) {
            0 => Fault::KillReplica(node),
            1 => Fault::PauseReplica(node),
            2 => Fault::PostgresDown,
            3 => Fault::PostgresRestart,
            4 => Fault::ReplicaFromDatabase(node, partition),
            5 => Fault::SidecarFromReplica(node, rng.random_range(0..SIZE), partition),
            6 => Fault::KillSidecar(node),
            7 => Fault::ReceiverFailing,
            _ => Fault::ReceiverHanging,
        }
    }

    async fn apply(self, cluster: &Cluster) {
        match self {
            Fault::KillReplica(i) => cluster.kill_replica(i).await,
            Fault::PauseReplica(i) => cluster.signal_replica(i, "STOP").await,
            Fault::PostgresDown | Fault::PostgresRestart => cluster.postgres.stop(),
            Fault::ReplicaFromDatabase(i, p) => partition(&cluster.database_links[i], p),
            Fault::SidecarFromReplica(s, r, p) => partition(&cluster.sidecar_links[s][r], p),
            Fault::KillSidecar(s) => cluster.kill_sidecar(s).await,
            Fault::ReceiverFailing => set_receiver(cluster, Behavior::Fail { times: usize::MAX }),
            Fault::ReceiverHanging => set_receiver(cluster, Behavior::Hang(Duration::from_secs(4))),
        }
    }

    async fn heal(self, cluster: &Cluster) {
        match self {
            Fault::KillReplica(i) => cluster.restart_replica(i).await,
            Fault::PauseReplica(i) => cluster.signal_replica(i, "CONT").await,
            Fault::PostgresDown | Fault::PostgresRestart => cluster.postgres.start_again(),
            Fault::ReplicaFromDatabase(i, _) => cluster.database_links[i].restore(),
            Fault::SidecarFromReplica(s, r, _) => cluster.sidecar_links[s][r].restore(),
            Fault::KillSidecar(s) => cluster.restart_sidecar(s).await,
            Fault::ReceiverFailing | Fault::ReceiverHanging => set_receiver(cluster, Behavior::Succeed),
        }
    }

    /// How long it is held.
    fn hold(self, rng: &mut StdRng) -> Duration {
        match self {
            Fault::PostgresRestart => Duration::ZERO,
            // Longer than two heartbeats: the sidecars must notice.
            Fault::PauseReplica(_) => Duration::from_millis(rng.random_range(2_500..6_000)),
            _ => Duration::from_millis(rng.random_range(1_000..6_000)),
        }
    }
}

fn partition(link: &crate::proxy::TcpProxy, how: Partition) {
    match how {
        Partition::Cut => link.cut(),
        Partition::Blackhole => link.blackhole(),
    }
}

fn set_receiver(cluster: &Cluster, behavior: Behavior) {
    for path in super::workload::ENDPOINT_PATHS {
        cluster.receiver.set(path, behavior.clone());
    }
}

/// Draws faults from `rng` and injects them one at a time until `until`
/// (a quiet gap of 0.5–3 s between two), healing each before the next.
pub async fn run(cluster: &Cluster, clock: Clock, until: Duration, mut rng: StdRng, history: &Shared) {
    while clock.now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3_000))).await;
        if clock.now() >= until {
            break;
        }
        let fault = Fault::draw(&mut rng);
        let hold = fault.hold(&mut rng);
        let started = clock.now();
        println!("{:>8.3}s  fault: {fault} for {hold:?}", started.as_secs_f64());
        fault.apply(cluster).await;
        tokio::time::sleep(hold).await;
        fault.heal(cluster).await;
        let healed = clock.now();
        record(history, |h| h.faults.push(FaultSpan { kind: fault.kind(), fault: fault.to_string(), started, healed }));
    }
}
