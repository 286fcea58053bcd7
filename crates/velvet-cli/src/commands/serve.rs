//! `velvet serve`.

use super::Context;
use crate::exit::Failure;
use velvet_server::ServeOptions;

pub async fn serve(ctx: &Context, no_migrate: bool) -> Result<(), Failure> {
    let config = ctx.load_config()?;
    let opts = ServeOptions {
        no_migrate,
        store: super::store_options()?,
        env: None,
    };
    let prepared = velvet_server::prepare(config, &opts).await?;
    velvet_server::serve(prepared, |_| {}).await?;
    Ok(())
}
