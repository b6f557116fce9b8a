//! A shard: routes commands to entity actors it spawns on demand, bounds their mailboxes,
//! and passivates idle ones.
//!
//! The shard shares its routing table ([`Routes`]) with the engine's senders: a command to an
//! aggregate whose actor is already active goes straight to that actor's mailbox (one task
//! hop and one wakeup fewer per command); only a command to an inactive aggregate, or one
//! sent while earlier commands to the same aggregate are still queued at the shard, goes
//! through the shard. Both decisions are taken under the table's lock, with the count of
//! commands still queued at the shard (`via_shard`), so per-sender order per aggregate holds:
//! a sender goes direct only when nothing it sent earlier to the aggregate is still queued
//! at the shard, and the shard publishes an actor only after handing it the command.

use super::entity::{EntityActor, EntityArgs, EntityMsg, Violations};
use super::Runtime;
use crate::error::{CommandError, UnavailableReason};
use crate::journal::StreamId;
use evershard_model::Aggregate;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::task::JoinHandle;

// `Route` carries every command; the other variants are rare control messages. Boxing the
// command would add an allocation per command to shrink messages that sit in a mailbox only
// briefly.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ShardMsg<A: Aggregate> {
    Route {
        aggregate_id: String,
        msg: EntityMsg<A>,
    },
    PassivateIdle,
    ActiveCount {
        reply: tokio::sync::oneshot::Sender<usize>,
    },
}

pub(crate) struct ShardActor<A>(PhantomData<fn() -> A>);

impl<A> ShardActor<A> {
    pub fn new() -> Self {
        ShardActor(PhantomData)
    }
}

pub(crate) struct ShardArgs<A: Aggregate> {
    pub index: usize,
    pub rt: Arc<Runtime>,
    /// Commands sent to this shard and not yet routed (bounded by the engine).
    pub queued: Arc<AtomicUsize>,
    /// The routing table the shard shares with the engine's senders.
    pub routes: Arc<Routes<A>>,
}

/// One aggregate in a shard's routing table: while commands to it are queued at the shard,
/// and while its actor is active.
struct Entry<A: Aggregate> {
    /// The active actor; `None` until the shard has spawned it and handed it a command.
    actor: Option<ActorRef<EntityMsg<A>>>,
    /// Commands handed to the actor and not yet answered: bounds the mailbox; the shard
    /// passivates only an actor at zero.
    inflight: Arc<AtomicUsize>,
    last_used: Instant,
    /// Commands to this aggregate queued at the shard (not yet handed to the actor). While
    /// any is, senders go through the shard too, behind them.
    via_shard: usize,
}

impl<A: Aggregate> Entry<A> {
    fn new() -> Self {
        Entry {
            actor: None,
            inflight: Arc::new(AtomicUsize::new(0)),
            last_used: Instant::now(),
            via_shard: 0,
        }
    }

    /// Active, and nothing in flight or queued for it: it may leave memory.
    fn idle(&self) -> bool {
        self.actor.is_some() && self.via_shard == 0 && self.inflight.load(Ordering::Acquire) == 0
    }
}

/// A shard's routing table, shared by the shard actor and the engine's senders. A short
/// `std` mutex: no await and no actor call is made while it is held.
pub(crate) struct Routes<A: Aggregate> {
    entries: Mutex<HashMap<String, Entry<A>>>,
}

/// What [`Routes::send_direct`] did with a command.
pub(crate) enum Direct<A: Aggregate> {
    /// In the active actor's mailbox.
    Sent,
    /// The actor's mailbox is full: the command, to refuse.
    Overloaded(EntityMsg<A>),
    /// No active actor, or commands to the aggregate queued at the shard: send the command
    /// through the shard (counted in `via_shard` already; [`Routes::not_via_shard`] undoes
    /// that if the shard refuses it).
    ViaShard(EntityMsg<A>),
}

impl<A: Aggregate> Routes<A> {
    pub(crate) fn new() -> Self {
        Routes {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry<A>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a command straight to the aggregate's active actor when it may (see the module
    /// comment), else counts it as going through the shard.
    pub(crate) fn send_direct(
        &self,
        aggregate_id: &str,
        msg: EntityMsg<A>,
        entity_mailbox_commands_max: usize,
    ) -> Direct<A> {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(aggregate_id) {
            if let (0, Some(actor)) = (entry.via_shard, &entry.actor) {
                if entry.inflight.load(Ordering::Acquire) >= entity_mailbox_commands_max {
                    return Direct::Overloaded(msg);
                }
                // Counted under the lock: the shard cannot passivate the actor from here on.
                entry.inflight.fetch_add(1, Ordering::AcqRel);
                entry.last_used = Instant::now();
                let (actor, inflight) = (actor.clone(), entry.inflight.clone());
                drop(entries);
                match actor.cast(msg) {
                    Ok(()) => return Direct::Sent,
                    Err(err) => {
                        // The actor stopped (it failed) after the lookup: its supervision
                        // event cleans up; this command goes through the shard instead.
                        inflight.fetch_sub(1, Ordering::AcqRel);
                        let ractor::MessagingErr::SendErr(msg) = err else {
                            // No message to retry: its reply channel closed unanswered, which
                            // the sender reads as the actor having stopped.
                            return Direct::Sent;
                        };
                        entries = self.lock();
                        entries
                            .entry(aggregate_id.to_owned())
                            .or_insert_with(Entry::new)
                            .via_shard += 1;
                        return Direct::ViaShard(msg);
                    }
                }
            }
            entry.via_shard += 1;
            return Direct::ViaShard(msg);
        }
        let mut entry = Entry::new();
        entry.via_shard = 1;
        entries.insert(aggregate_id.to_owned(), entry);
        Direct::ViaShard(msg)
    }

    /// A command counted by [`Routes::send_direct`] as going through the shard did not reach
    /// the shard's mailbox.
    pub(crate) fn not_via_shard(&self, aggregate_id: &str) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(aggregate_id) {
            entry.via_shard -= 1;
            if entry.via_shard == 0 && entry.actor.is_none() {
                entries.remove(aggregate_id);
            }
        }
    }
}

pub(crate) struct ShardState<A: Aggregate> {
    args: ShardArgs<A>,
    /// Aggregates whose state broke an invariant, kept by the shard so that passivation
    /// (which drops the entity) does not forget them: they refuse commands until the engine
    /// is reopened (and then recovery finds the violation again).
    violations: Violations,
    /// The active actors (spawned and not yet stopped or forgotten): its length is the
    /// shard's active count.
    by_actor: HashMap<ActorId, String>,
    /// The active actors in the order passivation looks at them (CLOCK: oldest first, a
    /// second chance for one used since it was queued). Entries whose actor is gone already
    /// are dropped when met, and compacted away at each idle check.
    ring: VecDeque<Queued>,
    ticker: Option<JoinHandle<()>>,
}

/// An actor in the passivation ring: which aggregate, which actor (an aggregate passivated
/// and started again has a new one), and when it was queued.
struct Queued {
    id: String,
    actor: ActorId,
    since: Instant,
}

impl<A: Aggregate> ShardState<A> {
    /// Stops the actors of these aggregates, which the caller took out of the table.
    fn stop_all(&mut self, actors: Vec<ActorRef<EntityMsg<A>>>) {
        for actor in actors {
            self.by_actor.remove(&actor.get_id());
            actor.stop(Some("passivated".into()));
        }
    }

    /// Takes the least recently used idle entity out of the routing table, approximately
    /// (CLOCK), and returns its actor for the caller to stop or reuse; `None` when every
    /// entity is busy. Amortized O(1) per call: each queued actor is met at most twice
    /// (its second chance, then its turn). A scan of every entity per spawned actor made
    /// touching many aggregates quadratic: 2,404 commands/s with 300,000 aggregates at 10,000
    /// active per shard, against 8,697/s at 1,000 (`benches/throughput.rs`, 2026-11-26).
    fn passivate_lru(&mut self) -> Option<ActorRef<EntityMsg<A>>> {
        let mut budget = 2 * self.ring.len() + 1;
        while budget > 0 {
            budget -= 1;
            let mut queued = self.ring.pop_front()?;
            let victim = {
                let mut entries = self.args.routes.lock();
                let Some(entry) = entries.get(&queued.id) else {
                    continue; // passivated or forgotten meanwhile
                };
                if entry.actor.as_ref().map(|a| a.get_id()) != Some(queued.actor) {
                    continue; // a newer actor of the aggregate has its own place
                }
                if !entry.idle() || entry.last_used > queued.since {
                    // Busy, or used since it was queued: it goes to the back.
                    queued.since = Instant::now();
                    self.ring.push_back(queued);
                    continue;
                }
                entries.remove(&queued.id).and_then(|e| e.actor)
            };
            if victim.is_some() {
                return victim;
            }
        }
        None
    }

    fn active(&self) -> usize {
        self.by_actor.len()
    }

    /// Drops ring entries of actors that are gone, once they outnumber the live ones.
    fn compact_ring(&mut self) {
        if self.ring.len() > 2 * self.by_actor.len() + 64 {
            let live = &self.by_actor;
            self.ring.retain(|q| live.contains_key(&q.actor));
        }
    }

    async fn spawn_entity(
        &mut self,
        myself: &ActorRef<ShardMsg<A>>,
        id: &str,
        inflight: Arc<AtomicUsize>,
    ) -> Result<ActorRef<EntityMsg<A>>, ActorProcessingErr> {
        let stream = StreamId::new(A::TYPE, id);
        let max = self.args.rt.config.active_per_shard_max;
        let reused = loop {
            if self.active() < max {
                break None;
            }
            // Every active entity busy: exceed the limit rather than block.
            let Some(victim) = self.passivate_lru() else {
                break None;
            };
            if self.active() > max {
                // Over the limit (all were busy before): back down to it first.
                self.stop_all(vec![victim]);
                continue;
            }
            // The passivated aggregate's actor becomes this one's, with no stop and no
            // spawn; its mailbox holds this aggregate's commands behind the rebind.
            let rebind = EntityMsg::Rebind {
                stream: stream.clone(),
                inflight: inflight.clone(),
            };
            match victim.cast(rebind) {
                Ok(()) => break Some(victim),
                // It stopped (failed) meanwhile: its supervision event finds nothing.
                Err(_) => {
                    self.by_actor.remove(&victim.get_id());
                }
            }
        };
        let actor = match reused {
            Some(actor) => actor,
            None => {
                let args = EntityArgs {
                    stream,
                    rt: self.args.rt.clone(),
                    inflight,
                    violations: self.violations.clone(),
                };
                let spawned =
                    Actor::spawn_linked(None, EntityActor::<A>::new(), args, myself.get_cell());
                spawned.await?.0
            }
        };
        // Queued in the passivation ring by `route`, once it has counted the first use.
        self.by_actor.insert(actor.get_id(), id.to_owned());
        Ok(actor)
    }

    /// Routes one command that came through the shard, then counts it out of `via_shard`
    /// (and publishes the actor) in one step under the table's lock.
    async fn route(
        &mut self,
        myself: &ActorRef<ShardMsg<A>>,
        id: String,
        msg: EntityMsg<A>,
    ) -> Result<(), ActorProcessingErr> {
        let routed = self.hand_over(myself, &id, msg).await;
        let mut entries = self.args.routes.lock();
        let entry = entries
            .get_mut(&id)
            .expect("counted in via_shard until here");
        entry.via_shard -= 1;
        match routed {
            Some(actor) => {
                let now = Instant::now();
                let started = entry.actor.is_none();
                let queued = Queued {
                    id,
                    actor: actor.get_id(),
                    since: now,
                };
                entry.actor = Some(actor);
                entry.last_used = now;
                drop(entries);
                if started {
                    // Queued as of its first command, not before it: an aggregate touched
                    // once is not "used since queued", so it leaves at its first turn
                    // instead of going round the ring twice (each turn a look-up in the
                    // table; the walk was 4.4% of the CPU with 400,000 aggregates touched
                    // once each).
                    self.ring.push_back(queued);
                }
            }
            None => {
                if entry.via_shard == 0 && entry.actor.is_none() {
                    entries.remove(&id);
                }
            }
        }
        Ok(())
    }

    /// Hands the command to the aggregate's actor, spawning it when needed; answers it with
    /// an error when it cannot. The actor it reached, if any.
    async fn hand_over(
        &mut self,
        myself: &ActorRef<ShardMsg<A>>,
        id: &str,
        msg: EntityMsg<A>,
    ) -> Option<ActorRef<EntityMsg<A>>> {
        let stream = || StreamId::new(A::TYPE, id);
        if let Some(violation) = self.violations.get(id) {
            msg.reject(violation.error(stream()));
            return None;
        }
        let (actor, inflight) = {
            let entries = self.args.routes.lock();
            let entry = entries.get(id).expect("counted in via_shard");
            (entry.actor.clone(), entry.inflight.clone())
        };
        let actor = match actor {
            Some(actor) => actor,
            None => match self.spawn_entity(myself, id, inflight.clone()).await {
                Ok(actor) => actor,
                Err(e) => {
                    // Fail this command, keep the shard (and its other aggregates) alive.
                    tracing::error!(shard = self.args.index, aggregate_id = %id, %e, "could not start the aggregate's actor");
                    msg.reject(CommandError::Unavailable {
                        stream: stream(),
                        reason: UnavailableReason::StartFailed,
                    });
                    return None;
                }
            },
        };
        let limit = self.args.rt.config.entity_mailbox_commands_max;
        if inflight.load(Ordering::Acquire) >= limit {
            msg.reject(CommandError::Overloaded {
                what: "the aggregate's mailbox",
                limit,
            });
            return Some(actor);
        }
        inflight.fetch_add(1, Ordering::AcqRel);
        match actor.cast(msg) {
            Ok(()) => Some(actor),
            Err(err) => {
                // The entity stopped between our lookup and the send (it failed). Its
                // supervision event will clean up; answer this command rather than lose it
                // silently, and forget the actor (the next command starts a new one).
                inflight.fetch_sub(1, Ordering::AcqRel);
                self.forget(id, actor.get_id());
                if let ractor::MessagingErr::SendErr(m) = err {
                    m.reject(CommandError::Unavailable {
                        stream: stream(),
                        reason: UnavailableReason::Stopped,
                    });
                }
                None
            }
        }
    }

    /// The actor `actor` of aggregate `id` stopped: commands go through the shard again,
    /// which starts a new one. Its in-flight count starts afresh (commands left in the dead
    /// actor's mailbox were answered as stopped, never counted down).
    fn forget(&mut self, id: &str, actor: ActorId) {
        self.by_actor.remove(&actor);
        let mut entries = self.args.routes.lock();
        if let Some(entry) = entries.get_mut(id) {
            if entry.actor.as_ref().is_some_and(|a| a.get_id() == actor) {
                entry.actor = None;
                entry.inflight = Arc::new(AtomicUsize::new(0));
                if entry.via_shard == 0 {
                    entries.remove(id);
                }
            }
        }
    }
}

impl<A: Aggregate> Actor for ShardActor<A> {
    type Msg = ShardMsg<A>;
    type State = ShardState<A>;
    type Arguments = ShardArgs<A>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ShardArgs<A>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let period = std::time::Duration::from_millis(args.rt.config.passivation_check_ms.max(1));
        let ticker = myself.send_interval(period, || ShardMsg::PassivateIdle);
        Ok(ShardState {
            args,
            violations: Violations::default(),
            by_actor: HashMap::new(),
            ring: VecDeque::new(),
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        // Wait for each entity, so that after the shard has stopped no actor holds the
        // journal any more.
        let actors: Vec<_> = {
            let mut entries = state.args.routes.lock();
            entries.drain().filter_map(|(_, e)| e.actor).collect()
        };
        for actor in actors {
            let _ = actor
                .stop_and_wait(Some("shard stopped".into()), None)
                .await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Route { aggregate_id, msg } => {
                state.args.queued.fetch_sub(1, Ordering::AcqRel);
                state.route(&myself, aggregate_id, msg).await?;
            }
            ShardMsg::PassivateIdle => {
                let idle = state.args.rt.passivate_idle();
                let expired: Vec<_> = {
                    let mut entries = state.args.routes.lock();
                    let ids: Vec<String> = entries
                        .iter()
                        .filter(|(_, e)| e.idle() && e.last_used.elapsed() >= idle)
                        .map(|(id, _)| id.clone())
                        .collect();
                    ids.iter()
                        .filter_map(|id| entries.remove(id).and_then(|e| e.actor))
                        .collect()
                };
                state.stop_all(expired);
                state.compact_ring();
            }
            ShardMsg::ActiveCount { reply } => {
                let _ = reply.send(state.active());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A failed entity harms nobody else: forget it; the next command recovers it.
        match event {
            SupervisionEvent::ActorFailed(cell, reason) => {
                if let Some(id) = state.by_actor.get(&cell.get_id()).cloned() {
                    tracing::error!(shard = state.args.index, aggregate_id = %id, %reason, "aggregate actor failed");
                    state.forget(&id, cell.get_id());
                }
            }
            SupervisionEvent::ActorTerminated(cell, ..) => {
                if let Some(id) = state.by_actor.get(&cell.get_id()).cloned() {
                    state.forget(&id, cell.get_id());
                }
            }
            _ => {}
        }
        Ok(())
    }
}
