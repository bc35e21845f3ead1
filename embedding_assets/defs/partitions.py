"""One dynamic partition per landed batch of documents."""

import dagster as dg

batches = dg.DynamicPartitionsDefinition(name="batches")
