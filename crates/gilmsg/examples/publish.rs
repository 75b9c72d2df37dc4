//! Acknowledged publish from a program: `cargo run -p gilmsg --example publish -- CONFIG RECIPIENT...`
//!
//! Publishes one message on `<prefix>.<env>.example.hello` and prints who
//! acked, or who did not. Try it against the demo bus: `gilmsg-demo --keep`
//! prints the directory that holds its `bus.toml`.

use std::path::PathBuf;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config_path = PathBuf::from(args.next().ok_or("usage: publish CONFIG RECIPIENT...")?);
    let recipients: Vec<String> = args.collect();
    let config = gilmsg::Config::from_path(&config_path)?;
    let bus = gilmsg::Bus::builder(&config)
        .modname("example")
        .active(true)
        .build()?;
    let msg = serde_json::json!({"hello": "world"});
    match bus
        .publish("hello", msg, &recipients, Duration::from_secs(3))
        .await
    {
        Ok(receipt) => {
            for ack in &receipt.acks {
                println!("{} acked after {:?}", ack.recipient, ack.after);
            }
        }
        Err(gilmsg::Error::Timeout(t)) => {
            println!(
                "not acked by {:?}; acked by {:?}",
                t.missing,
                t.acked_names()
            );
        }
        Err(e) => return Err(e.into()),
    }
    bus.close().await;
    Ok(())
}
