//! `l2rec bench score`: catalog scoring, CPU against GPU.
