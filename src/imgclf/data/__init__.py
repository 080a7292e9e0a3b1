"""The data layer's home: what turns files into hashes, near-duplicate pairs and groups.

Its modules are pure functions over arrays, sized for real datasets: nothing in here holds a
matrix whose size grows with the square of the number of files.
"""
