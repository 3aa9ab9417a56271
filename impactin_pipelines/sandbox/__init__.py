"""Local, faithful fakes of Benevity, Goodera and Workday for the demo, the tests and the benchmarks.

Only tests, the demo and benchmarks import this package; production code never does.
"""
