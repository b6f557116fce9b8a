//! A shard: routes commands to entity actors it spawns on demand, bounds their mailboxes,
//! and passivates idle ones.

use super::entity::{EntityActor, EntityArgs, EntityMsg, Violations};
use super::Runtime;
use crate::error::{CommandError, UnavailableReason};
use crate::journal::StreamId;
use evershard_model::Aggregate;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

pub(crate) struct ShardArgs {
    pub index: usize,
    pub rt: Arc<Runtime>,
    /// Commands sent to this shard and not yet routed (bounded by the engine).
    pub queued: Arc<AtomicUsize>,
}

struct Entry<A: Aggregate> {
    actor: ActorRef<EntityMsg<A>>,
    inflight: Arc<AtomicUsize>,
    last_used: Instant,
}

pub(crate) struct ShardState<A: Aggregate> {
    args: ShardArgs,
    /// Aggregates whose state broke an invariant, kept by the shard so that passivation
    /// (which drops the entity) does not forget them: they refuse commands until the engine
    /// is reopened (and then recovery finds the violation again).
    violations: Violations,
    entities: HashMap<String, Entry<A>>,
    by_actor: HashMap<ActorId, String>,
    ticker: Option<JoinHandle<()>>,
}

impl<A: Aggregate> ShardState<A> {
    fn passivate(&mut self, id: &str) {
        if let Some(entry) = self.entities.remove(id) {
            self.by_actor.remove(&entry.actor.get_id());
            entry.actor.stop(Some("passivated".into()));
        }
    }

    /// Passivates the least recently used idle entity; false when every entity is busy.
    fn passivate_lru(&mut self) -> bool {
        let victim = self
            .entities
            .iter()
            .filter(|(_, e)| e.inflight.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(id, _)| id.clone());
        match victim {
            Some(id) => {
                self.passivate(&id);
                true
            }
            None => false,
        }
    }

    async fn spawn_entity(
        &mut self,
        myself: &ActorRef<ShardMsg<A>>,
        id: &str,
    ) -> Result<(), ActorProcessingErr> {
        while self.entities.len() >= self.args.rt.config.active_per_shard_max {
            if !self.passivate_lru() {
                break; // every active entity is busy: exceed the limit rather than block
            }
        }
        let inflight = Arc::new(AtomicUsize::new(0));
        let args = EntityArgs {
            stream: StreamId::new(A::TYPE, id),
            rt: self.args.rt.clone(),
            inflight: inflight.clone(),
            violations: self.violations.clone(),
        };
        let (actor, _) =
            Actor::spawn_linked(None, EntityActor::<A>::new(), args, myself.get_cell()).await?;
        self.by_actor.insert(actor.get_id(), id.to_owned());
        self.entities.insert(
            id.to_owned(),
            Entry {
                actor,
                inflight,
                last_used: Instant::now(),
            },
        );
        Ok(())
    }

    async fn route(
        &mut self,
        myself: &ActorRef<ShardMsg<A>>,
        id: String,
        msg: EntityMsg<A>,
    ) -> Result<(), ActorProcessingErr> {
        let stream = || StreamId::new(A::TYPE, id.clone());
        if let Some(violation) = self.violations.get(&id) {
            msg.reject(violation.error(stream()));
            return Ok(());
        }
        if !self.entities.contains_key(&id) {
            if let Err(e) = self.spawn_entity(myself, &id).await {
                // Fail this command, keep the shard (and its other aggregates) alive.
                tracing::error!(shard = self.args.index, aggregate_id = %id, %e, "could not start the aggregate's actor");
                msg.reject(CommandError::Unavailable {
                    stream: stream(),
                    reason: UnavailableReason::StartFailed,
                });
                return Ok(());
            }
        }
        let limit = self.args.rt.config.entity_mailbox_commands_max;
        let entry = self.entities.get_mut(&id).expect("spawned above");
        if entry.inflight.load(Ordering::Acquire) >= limit {
            msg.reject(CommandError::Overloaded {
                what: "the aggregate's mailbox",
                limit,
            });
            return Ok(());
        }
        entry.inflight.fetch_add(1, Ordering::AcqRel);
        entry.last_used = Instant::now();
        if let Err(err) = entry.actor.cast(msg) {
            // The entity stopped between our lookup and the send (it failed). Its supervision
            // event will clean up; answer this command rather than lose it silently.
            let msg = match err {
                ractor::MessagingErr::SendErr(m) => Some(m),
                _ => None,
            };
            self.passivate(&id);
            if let Some(m) = msg {
                m.reject(CommandError::Unavailable {
                    stream: stream(),
                    reason: UnavailableReason::Stopped,
                });
            }
        }
        Ok(())
    }
}

impl<A: Aggregate> Actor for ShardActor<A> {
    type Msg = ShardMsg<A>;
    type State = ShardState<A>;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ShardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let period = std::time::Duration::from_millis(args.rt.config.passivation_check_ms.max(1));
        let ticker = myself.send_interval(period, || ShardMsg::PassivateIdle);
        Ok(ShardState {
            args,
            violations: Violations::default(),
            entities: HashMap::new(),
            by_actor: HashMap::new(),
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
        for (_, entry) in state.entities.drain() {
            let _ = entry
                .actor
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
                let expired: Vec<String> = state
                    .entities
                    .iter()
                    .filter(|(_, e)| {
                        e.inflight.load(Ordering::Acquire) == 0 && e.last_used.elapsed() >= idle
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    state.passivate(&id);
                }
            }
            ShardMsg::ActiveCount { reply } => {
                let _ = reply.send(state.entities.len());
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
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    tracing::error!(shard = state.args.index, aggregate_id = %id, %reason, "aggregate actor failed");
                    state.entities.remove(&id);
                }
            }
            SupervisionEvent::ActorTerminated(cell, ..) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    if state
                        .entities
                        .get(&id)
                        .is_some_and(|e| e.actor.get_id() == cell.get_id())
                    {
                        state.entities.remove(&id);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
