"""Tests of logitcache.methods."""
