"""The data layer's home: what turns files into hashes, near-duplicate pairs and groups, and
:mod:`~imgclf.data.synth`, which writes synthetic datasets of any size to measure it on.

Its modules are pure functions over arrays, sized for real datasets: nothing in here holds a
matrix whose size grows with the square of the number of files.
"""
