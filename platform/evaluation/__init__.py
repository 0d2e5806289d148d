"""Evaluation with BasicSR's conventions, shared by validation inside training, `hiir eval` and `hiir restore`.

    metrics   PSNR / SSIM exactly as BasicSR computes them (uint8, crop border, BT.601 Y, float64)
    evaluate  whole-image (or tiled, self-ensembled) scoring of val sets; exported-weights loading
    restore   images in, restored PNGs out: the one restoring path of `hiir restore` and the MLflow model
    mlflow_model  the trained model as an MLflow models-from-code pyfunc (PNG bytes in and out), what runs log
    strips    LQ | output | GT sample strips logged to MLflow
"""
