//! Plain CPU references for every GPU op, forward and backward, in f64. Tests compare the GPU
//! against these, and check these against central finite differences.
