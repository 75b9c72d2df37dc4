//! [`ExternalAcker`]: the signed ACK for a message that another AMQP
//! client consumed, for services whose queue is read by fedora-messaging
//! (`fedora-messaging consume --callback=...`) rather than by a gilmsg
//! [`Consumer`](crate::Consumer). The caller hands over what that client
//! received (routing key, body, the `gilmsg_envelope` header, `message_id`,
//! `reply_to`) once its handler succeeded; this rebuilds the envelope as
//! the AMQP transport does, checks it as a gilmsg consumer would
//! (`validate_signatures`: signature, CRL, routing policy), signs the ACK
//! (its digest binds it to the exact body) and publishes it to the
//! message's `reply_to`, waiting for the broker's confirm.
//!
//! What it does not do, because the other client owns the delivery:
//! dedupe (a redelivered copy is simply acked again, which a publisher
//! counts once) and settling the delivery with the broker.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use gilmsg_config::Config;
use gilmsg_proto::ack::AckBody;
use gilmsg_proto::Validator;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::connect::Broker;
use super::AmqpMessage;
use crate::error::{Error, Result};
use crate::setup;
use crate::transport::consumer::Acker;

/// What another AMQP client received: the parts an ACK depends on.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// The routing key it arrived with (its topic).
    pub routing_key: &'a str,
    /// Its body (the JSON `msg`).
    pub body: &'a [u8],
    /// Its `gilmsg_envelope` header (the signed envelope), if any.
    pub envelope_header: Option<&'a str>,
    /// Its `message_id` property.
    pub message_id: Option<&'a str>,
    /// Its `reply_to` property: where the publisher hears ACKs.
    pub reply_to: Option<&'a str>,
}

/// What [`ExternalAcker::ack`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckOutcome {
    /// The signed ACK was published and the broker confirmed it.
    Sent {
        /// The acknowledged message's id.
        msg_id: String,
        /// Its verified signer (`None` when signatures are not checked).
        signer: Option<String>,
    },
    /// The message did not ask for an ACK (no `gilmsg_version`: a plain
    /// fedora-messaging or fedmsg message, or an ACK).
    NotRequested,
}

/// Signs and publishes ACKs for messages another client consumed. One per
/// process; its connection to the broker is opened on first use and
/// re-opened after a failure.
pub struct ExternalAcker {
    broker: Broker,
    acker: Acker,
    validator: Option<Arc<Validator>>,
    max_message_size: usize,
    live: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for ExternalAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAcker")
            .field("broker", &self.broker.shown())
            .field("ack_topic", &self.acker.ack_topic)
            .finish_non_exhaustive()
    }
}

impl ExternalAcker {
    /// An acker signing as `certname`, on the broker of `config` (which
    /// must have `amqp_url`).
    pub fn new(config: &Config, certname: &str) -> Result<ExternalAcker> {
        config.validate()?;
        let Some(amqp) = &config.amqp else {
            return Err(Error::InvalidArgument(
                "acking an AMQP message needs an AMQP configuration (amqp_url)".into(),
            ));
        };
        let trust = if config.validate_signatures {
            Some(setup::load_trust(config)?)
        } else {
            setup::load_trust_if_any(config)?
        };
        let validator = trust
            .as_ref()
            .filter(|_| config.validate_signatures)
            .map(|t| setup::validator(config, Arc::clone(t)));
        let signer = setup::load_signer(config, certname, trust.as_deref())?;
        Ok(ExternalAcker {
            broker: Broker::new(amqp, certname)?,
            acker: Acker {
                signer,
                ack_topic: config.topic_scheme().ack_topic(),
                sequence: AtomicU64::new(0),
                username: setup::username(),
            },
            validator,
            max_message_size: config.max_message_size,
            live: tokio::sync::Mutex::new(None),
        })
    }

    /// Checks `received` and publishes its signed ACK to its `reply_to`
    /// (else the ACK topic). A message that fails the checks a gilmsg
    /// consumer makes is not acked: [`Error::Message`] or
    /// [`Error::InvalidArgument`] names why.
    pub async fn ack(&self, received: Received<'_>) -> Result<AckOutcome> {
        let mut headers = FieldTable::default();
        if let Some(text) = received.envelope_header {
            headers.insert(
                super::ENVELOPE_HEADER.into(),
                AMQPValue::LongString(LongString::from(text.as_bytes().to_vec())),
            );
        }
        let mut properties = BasicProperties::default().with_headers(headers);
        if let Some(id) = received.message_id {
            properties = properties.with_message_id(ShortString::from(id.to_owned()));
        }
        let wire = AmqpMessage::received(
            received.routing_key.to_owned(),
            received.body.to_vec(),
            properties,
            &self.acker.ack_topic,
        );
        let envelope = super::decode(&wire, self.max_message_size)
            .map_err(|e| Error::InvalidArgument(format!("not a gilmsg message: {e}")))?;
        if !envelope.wants_ack() || envelope.topic() == self.acker.ack_topic {
            return Ok(AckOutcome::NotRequested);
        }
        let signed = envelope
            .signed_part()
            .map_err(|e| Error::InvalidArgument(format!("no canonical form: {e}")))?;
        let signer = match &self.validator {
            Some(v) => Some(
                v.validate_signed(&envelope, &signed)
                    .map_err(|e| Error::InvalidArgument(format!("refused, not acked: {e}")))?
                    .signer,
            )
            .flatten(),
            None => None,
        };
        let sealed = self.acker.seal_bodies(vec![AckBody {
            ack_msg_id: envelope.msg_id().to_owned(),
            ack_digest: Some(signed.digest()),
            ack_signer: signer.clone(),
        }])?;
        let ack = super::encode(&sealed);
        let route = received
            .reply_to
            .unwrap_or(&self.acker.ack_topic)
            .to_owned();
        self.publish(&route, &ack).await?;
        Ok(AckOutcome::Sent {
            msg_id: envelope.msg_id().to_owned(),
            signer,
        })
    }

    /// Publishes on the publish exchange and waits for the confirm; a
    /// failure drops the connection so that the next ACK opens a new one.
    async fn publish(&self, route: &str, ack: &AmqpMessage) -> Result<()> {
        let mut live = self.live.lock().await;
        if live.is_none() {
            let connection = self.broker.connect().await?;
            let channel = self.broker.channel(&connection).await?;
            *live = Some((connection, channel));
        }
        let Some((_, channel)) = live.as_ref() else {
            return Err(Error::Closed);
        };
        let exchange = self.broker.config.publish_exchange.as_str();
        let outcome = match channel
            .basic_publish(
                exchange.into(),
                route.into(),
                BasicPublishOptions::default(),
                &ack.body,
                ack.properties.clone(),
            )
            .await
        {
            Ok(confirm) => confirm.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(Confirmation::Ack(_)) => Ok(()),
            Ok(other) => Err(Error::Broker {
                context: format!("ACK to {route}"),
                reason: format!("the broker did not confirm it ({other:?})"),
            }),
            Err(reason) => {
                *live = None;
                Err(Error::Broker {
                    context: format!("ACK to {route}"),
                    reason,
                })
            }
        }
    }
}
