//! An ACK-sending consumer: `cargo run -p gilmsg --example ack_consumer -- CONFIG CERTNAME`
//!
//! Handles each message once and acks it only after the handler succeeded;
//! here the "handler" refuses messages whose payload says `"fail": true`,
//! and those are never acked (the publisher's timeout names us).

use std::path::PathBuf;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config_path = PathBuf::from(args.next().ok_or("usage: ack_consumer CONFIG CERTNAME")?);
    let certname = args.next().ok_or("usage: ack_consumer CONFIG CERTNAME")?;
    let config = gilmsg::Config::from_path(&config_path)?;
    let mut consumer = gilmsg::Consumer::builder(&config)
        .certname(certname)
        .build()?;
    let ready = consumer.ready().await;
    eprintln!("ready: {}/{} endpoints", ready.connected, ready.expected);
    while let Some(delivery) = consumer.next().await {
        println!(
            "{} from {:?}: {}",
            delivery.topic(),
            delivery.signer(),
            delivery.msg()
        );
        if delivery.msg().get("fail") == Some(&serde_json::Value::Bool(true)) {
            delivery.fail();
        } else {
            delivery.ack()?;
        }
    }
    Ok(())
}
