"""Broker adapters. Each folder is one adapter; each depends on `eventbus`, never on another."""
