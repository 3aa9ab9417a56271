"""The loopback server and shared machinery of the providers' local, faithful fakes (each in
`providers/<name>/fake.py`) for the demo, the tests and the benchmarks.

Only tests, the demo and benchmarks import this package and the fakes; production code never does.
"""
