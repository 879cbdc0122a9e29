//! An OTLP/gRPC trace receiver for benchmarks (scripts/bench-ab.sh with
//! NEW_ARGS="--otlp-endpoint ..."): prints its address, then the number of
//! spans received every 5 s, until killed. Counts the spans and drops
//! them, so its own work stays small (decoding the batches).

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let rx = weft_test_support::OtlpReceiver::start_counting().await?;
    println!("{}", rx.addr());
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        eprintln!("spans received: {}", rx.count());
    }
}
