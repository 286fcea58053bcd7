//! Probe results (design §11): each consumer's health and the source's, as JSON on their rows.
//! A change of state is a notification event (`drift`, `stale`) in the same transaction.

use crate::StoreError;
use crate::db::{Backend, Conn, Driver};
use async_trait::async_trait;
use velvet_core::model::{Health, HealthState};

/// Whose health: a consumer of the token, or its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed<'a> {
    Consumer(&'a str),
    Source,
}

/// One consumer's latest probe, for the status summary.
#[derive(Debug, Clone)]
pub struct ConsumerHealth {
    pub token: String,
    pub consumer: String,
    pub health: Health,
}

impl crate::db::FromRow for ConsumerHealth {
    fn from_row(r: &mut crate::db::Row) -> Result<Self, crate::db::DbError> {
        let (token, consumer, text) = (r.text()?, r.text()?, r.text()?);
        let health = serde_json::from_str(&text).unwrap_or(Health {
            state: HealthState::Unreachable,
            checked_at: chrono::Utc::now(),
            detail: "the stored probe result does not parse".into(),
        });
        Ok(Self {
            token,
            consumer,
            health,
        })
    }
}

#[async_trait]
pub trait HealthStore: Send + Sync {
    /// Stores `health`; returns the state it replaced (`None`: never probed). Entering
    /// `drifted` or `stale` records a `drift` or `stale` notification.
    async fn set_health(
        &self,
        token: &str,
        of: Probed<'_>,
        health: &Health,
    ) -> Result<Option<HealthState>, StoreError>;

    /// Every active consumer's latest probe, in one read.
    async fn consumer_health(&self) -> Result<Vec<ConsumerHealth>, StoreError>;
}

async fn previous<C: Conn>(
    c: &mut C,
    token: &str,
    of: Probed<'_>,
) -> Result<Option<HealthState>, StoreError> {
    let text: Option<Option<String>> = match of {
        Probed::Consumer(name) => {
            c.opt(
                "reading a consumer's health",
                "SELECT c.health FROM consumers c JOIN tokens t ON t.id = c.token_id
                 WHERE t.name = $1 AND c.name = $2 AND c.status = 'active'",
                &[token.into(), name.into()],
            )
            .await?
        }
        Probed::Source => {
            c.opt(
                "reading a source's health",
                "SELECT source_health FROM tokens WHERE name = $1",
                &[token.into()],
            )
            .await?
        }
    };
    Ok(text
        .flatten()
        .and_then(|t| serde_json::from_str::<Health>(&t).ok())
        .map(|h| h.state))
}

#[async_trait]
impl<B: Backend> HealthStore for B {
    async fn consumer_health(&self) -> Result<Vec<ConsumerHealth>, StoreError> {
        crate::db::read_all(
            self,
            "reading consumer health",
            "SELECT t.name, c.name, c.health FROM consumers c JOIN tokens t ON t.id = c.token_id
             WHERE c.status = 'active' AND t.status = 'active' AND c.health IS NOT NULL ORDER BY t.name, c.id",
            vec![],
        )
        .await
    }

    async fn set_health(
        &self,
        token: &str,
        of: Probed<'_>,
        health: &Health,
    ) -> Result<Option<HealthState>, StoreError> {
        let (token, health) = (token.to_string(), health.clone());
        let consumer = match of {
            Probed::Consumer(c) => Some(c.to_string()),
            Probed::Source => None,
        };
        self.driver()
            .write("recording a probe", move |c| {
                Box::pin(async move {
                    let of = consumer.as_deref().map_or(Probed::Source, Probed::Consumer);
                    let before = previous(c, &token, of).await?;
                    let json = serde_json::to_string(&health).expect("health serialises");
                    match of {
                        Probed::Consumer(name) => {
                            c.run(
                                "recording a consumer's health",
                                "UPDATE consumers SET health = $3 WHERE token_id = (SELECT id FROM tokens WHERE name = $1)
                                 AND name = $2 AND status = 'active'",
                                &[token.as_str().into(), name.into(), json.as_str().into()],
                            )
                            .await?;
                        }
                        Probed::Source => {
                            c.run(
                                "recording a source's health",
                                "UPDATE tokens SET source_health = $2 WHERE name = $1",
                                &[token.as_str().into(), json.as_str().into()],
                            )
                            .await?;
                        }
                    }
                    let event = match health.state {
                        HealthState::Drifted => Some("drift"),
                        HealthState::Stale => Some("stale"),
                        _ => None,
                    };
                    if let Some(event) = event
                        && before != Some(health.state)
                    {
                        let data = serde_json::json!({
                            "consumer": consumer,
                            "state": health.state.as_str(),
                            "detail": format!("{}: {}", consumer.as_deref().map_or("the source".to_string(), |n| format!("consumer {n}")), health.detail),
                        });
                        crate::notifications::record(c, event, &token, None, &data).await?;
                    }
                    Ok(before)
                })
            })
            .await
    }
}
