/* init.h — torch.nn.init equivalents, seeded (values differ from PyTorch's generator;
 * the distributions are the same). */
#ifndef GRAFT_NN_INIT_H
#define GRAFT_NN_INIT_H

#include "core/rng.h"
#include "core/tensor.h"

/* fan_in and fan_out as torch.nn.init._calculate_fan_in_and_fan_out: dims 1 and 0
 * times the receptive field (product of dims 2..). */
void graft_init_fans(const graft_tensor *w, double *fan_in, double *fan_out);
void graft_init_normal(graft_tensor *t, double mean, double std, graft_rng *r);
void graft_init_uniform(graft_tensor *t, double lo, double hi, graft_rng *r);
void graft_init_constant(graft_tensor *t, double v);
/* kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / fan_out) */
void graft_init_kaiming_normal_fan_out(graft_tensor *t, graft_rng *r);

#endif
