"""Fault campaign: inject faults into real coordinators, seeds and targets, count what survived."""
