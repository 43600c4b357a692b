"""A lab of boards: measurement workers on edge boards over SSH (``board``, ``ship``, ``remote``), and the labgrid
places a session holds exclusively (``places``: reserve, wait, acquire, give back; a labgrid target as a board).

Routing by detected markers and the fleet certificate build on these (issue 17).
"""
