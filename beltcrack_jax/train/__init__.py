"""Training: the reference optimiser / schedules / EMA and the sharded, multi-host, resumable train loop.

    optim          param_labels (pg0/pg1/pg2/frozen from reference names), sgd_reference (PyTorch SGD-Nesterov
                   + weight decay on pg1), lr_bounds (batch/64 rule + clamps), warm_cos_lr, make_schedule
    ema            ema_decay, ema_update (ModelEMA: params and BN statistics)
    state          TrainState (pytree), create_train_state, load_pretrained (name+shape match, like the reference)
    sharding       make_mesh (('data',), Auto), data/replicated shardings, global_batch (host -> global arrays)
    steps          make_train_step (grad accumulation, bf16 compute, non-finite guard)
    checkpoint     Checkpointer (orbax: state + grain iterator + config JSON; refuses a workdir of another config)
    metric_writer  MetricWriter (stdout + JSONL + TensorBoard via tensorboardX), ProgressBar
    loop           train_and_evaluate(config, workdir), TrainData, NonFiniteLossError, maybe_initialize_distributed
"""
