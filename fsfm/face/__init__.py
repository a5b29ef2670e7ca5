"""The face pipeline shared by training and serving: detect -> crop -> normalise."""
