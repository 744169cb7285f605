"""logitcache."""
