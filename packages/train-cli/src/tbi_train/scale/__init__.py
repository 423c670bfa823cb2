"""Scale-out: engines (DDP, DeepSpeed ZeRO-1/2/3, FSDP2), launchers, DeepSpeed JSON, memory planning."""
