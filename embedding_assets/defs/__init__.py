"""The Dagster layer: partitions, resources, assets, checks and sensors over `embedding_assets.lib`."""
