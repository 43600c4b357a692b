"""A lab of boards: measurement workers on edge boards over SSH (``board``, ``ship``, ``remote``).

Labgrid places, routing by detected markers and the fleet certificate build on these (issue 17).
"""
