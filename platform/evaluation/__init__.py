"""Evaluation with BasicSR's conventions, shared by validation inside training, `hiir eval` and `hiir restore`.

    metrics   PSNR / SSIM exactly as BasicSR computes them (uint8, crop border, BT.601 Y, float64)
    evaluate  whole-image (or tiled, self-ensembled) scoring of val sets; exported-weights loading
    restore   image files in, restored PNGs out
    strips    LQ | output | GT sample strips logged to MLflow
"""
